"""BenchmarkResult (the one record every script writes), the run header, and atomic, resumable JSON files.

File layout: {"schema_version": 2, "run": {...}, "results": [BenchmarkResult, ...]}. The file is rewritten
atomically after every record, so a run that dies half-way loses at most the record in flight, and `--resume`
skips the records already there.

The file stays standard JSON (json.load reads it) laid out to be diffed: a list of numbers is one line, a list of
such lists one line per row (kv_tokens_per_head: one line per layer), everything else as json.dump(indent=1).
A batch whose consecutive sequences repeat (cloned admission: rows 1..B-2 copy row 0's cache) stores its per-head
lists once per run of identical sequences: the record then carries `sequence_copies`, how many consecutive
sequences each stored block of kv heads stands for (sum = batch); `load` expands them back, so in memory
kv_tokens_per_head[_end][layer] always holds batch x kv heads entries (row b * Hkv + h).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import weakref
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from kvcompress.errors import UserError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
READABLE = " and ".join(map(str, READABLE_VERSIONS))
# Loader policy. Within a version, fields are only ever added: a record that lacks a newer field takes its default,
# and a field this code does not know is ignored. Version 2 added `sequence_copies`, which changes how long the
# per-head lists stored beside it are (an older reader would take them as they stand): version 1 files never carry
# it and are read as they are. Any other version is refused by name: version 1 is the first, so there is nothing
# older to migrate, and a newer file may mean something this code cannot know.


@dataclass
class BenchmarkResult:
    # --- the contract: these names never change -------------------------------------------------------------------
    model: str
    weights: str  # "pretrained" | "random"
    method: str  # "vanilla", "knorm@0.5", "dms-8x", ...
    press: str | None = None  # the kvpress object as built, e.g. "KnormPress(compression_ratio=0.5)"
    compression_ratio: float | None = None  # requested fraction of context KV entries to evict
    context_tokens: int = 0  # tokens compressed (chat-template prefix + context)
    input_tokens: int = 0  # context + question tokens
    output_tokens: int = 0  # tokens generated per repeat
    ttft_s: float | None = None  # median time to first token, compression included
    prefill_tokens_per_s: float | None = None  # input_tokens / ttft_s
    tpot_ms: float | None = None  # median of (e2e - ttft) / (output_tokens - 1)
    decode_tokens_per_s: float | None = None  # 1000 / tpot_ms (batch 1)
    e2e_s: float | None = None  # median end-to-end time of one generation
    peak_mem_prefill_bytes: int | None = None  # peak during prefill + compression + question + first token
    peak_mem_decode_bytes: int | None = None  # peak during decoding (reset after the first token)
    weights_bytes: int | None = None
    kv_cache_bytes: int | None = None  # bytes the cache tensors hold right after the context's prefill/compression
    kv_cache_bytes_end: int | None = None  # bytes the cache tensors hold at the end of decoding
    kv_tokens_kept: float | None = None  # live tokens after compression, mean over layers (and heads)
    kv_compression_achieved: float | None = None  # 1 - kv_tokens_kept / positions prefilled
    kv_memory_saved: bool | None = None  # measured bytes < bytes of the same cache uncompressed
    repeats: int = 0
    ttft_iqr_s: float | None = None
    tpot_iqr_ms: float | None = None
    answer: str | None = None
    error: str | None = None  # null, or a one-line reason ("CUDA OOM", ...)
    # --- extras --------------------------------------------------------------------------------------------------
    engine: str | None = None  # "hf" | "fast"
    engine_note: str | None = None  # why a requested engine was not used, if so
    protocol: str | None = None  # "query_agnostic" | "query_aware" | "single_prefill" (DMS)
    fixed_output_length: bool | None = None  # EOS ignored so every method does the same work
    expected_memory: str | None = None  # kvpress's documented behaviour: real | uneven | mask | none
    phase: str | None = None  # when the method compresses: prefill | decoding | prefill+decoding
    kv_tokens_kept_min: float | None = None  # per layer (uneven presses differ)
    kv_tokens_kept_max: float | None = None
    kv_tokens_kept_rows: list[float] | None = None  # a batch's: each sequence's kv_tokens_kept (that is their mean)
    kv_cache_bytes_full: int | None = None  # bytes the same cache would hold with nothing evicted
    kv_live_bytes: int | None = None  # bytes of entries attention still sees (DMS pool: live part)
    kv_live_bytes_end: int | None = None
    kv_tokens_end: float | None = None
    # live tokens per [layer][kv head] after prefill and at the end, where heads keep different counts (DMS); a batch's
    # rows are b * Hkv + h (in a file, repeated sequences are stored once: `sequence_copies`, see the module docstring)
    kv_tokens_per_head: list[list[int]] | None = None
    kv_tokens_per_head_end: list[list[int]] | None = None
    # test_kvpress_api.py: memory behaviour classified from the measured bytes (real | uneven | mask | none), at the
    # end of decoding for decoding-phase presses; and the fraction evicted at the end of decoding.
    kv_memory_measured: str | None = None
    kv_compression_achieved_end: float | None = None
    answer_tokens: int | None = None  # tokens up to the first end-of-sequence
    ttft_samples_s: list[float] = field(default_factory=list)
    tpot_samples_ms: list[float] = field(default_factory=list)
    timing: str | None = None  # "cuda_events" | "wall_clock"
    memory_source: str | None = None  # "cuda_max_memory_allocated" | "process_peak_rss"
    sampling: str | None = None
    seed: int | None = None
    dtype: str | None = None
    attn_implementation: str | None = None
    process: str | None = None  # "main" | "isolated" (DMS runs where kvpress is not imported)
    task: str | None = None  # "benchmark" | "niah" | "kvpress_api" | "dms_inference"
    target_tokens: int | None = None  # the prompt length asked for (input_tokens lands within 1 % of it)
    max_new_tokens: int | None = None  # the output budget asked for
    depth: float | None = None
    depth_achieved: float | None = None  # where the needle really is (haystack tokens before it / haystack tokens)
    needle: str | None = None
    correct: bool | None = None
    score: float | None = None  # fraction of needle values found
    prompt_id: str | None = None
    # test_long_context.py --tasks: `task` stays the script's name; the family is one of tasks/families.FAMILIES
    task_family: str | None = None  # "niah" | "multiquery" | "vt" | "cwe" | "fwe" | "nolima"
    scorer: str | None = None  # RULER's string_match_all | string_match_part (score = its value; niah: own)
    expected: list[str] | None = None  # the strings the answer must contain
    chance: float | None = None  # cwe, fwe, nolima: the score, on this prompt, of a strategy without the tested ability
    # --questions K: K records share one compressed context; its compression time is on question 0 only
    question_index: int | None = None
    questions_per_context: int | None = None
    context_compress_s: float | None = None
    kv_budget: str | None = None  # a press sized to a budget (knorm@2048tok, --match-kv): what was asked for
    notes: list[str] = field(default_factory=list)
    # DMS: "native" (methods/dms.py) | "remote" (the checkpoint's code); how the engine holds the rule's cache
    # (hf: "mask, no reclaim"); whose decisions: "checkpoint" or "calibrated to evict X of tokens outside the window"
    dms_impl: str | None = None
    dms_layout: str | None = None
    dms_decisions: str | None = None
    # --- batched decode (--batch N, benchmark.py capacity): N prompts (needle seeds seed..seed+N-1) admitted one by
    # one, each prefilled and compressed on its own, then decoded together. At batch 1 these restate the fields above.
    # Per sequence: ttft_s, tpot_ms (one step of the batch, timed over the steps after the first, which captures the
    # graph; = vLLM's TPOT and mean ITL: every step gives each sequence one token),
    # decode_tokens_per_s, kv_tokens_kept, kv_compression_achieved. Whole batch: kv_cache_bytes*, kv_live_bytes*,
    # peaks.
    batch: int = 1  # sequences decoded together (part of the identity)
    # start of the first prefill -> the last sequence's first token sampled and every cache in the batch's decode
    # cache (median over repeats); at batch 1: = ttft_s
    batch_admit_s: float | None = None
    ttft_sequences_s: list[float] = field(default_factory=list)  # each prefilled sequence's TTFT, last timed repeat
    aggregate_decode_tokens_per_s: float | None = None  # batch x 1000 / tpot_ms: decode tokens/s of the whole batch
    output_throughput_tokens_per_s: float | None = None  # vLLM's output throughput: batch x output tokens / e2e_s
    context_tokens_total: int | None = None  # context tokens summed over the batch's sequences
    admission: str | None = None  # "each" | "cloned" (capacity search: rows 1..B-2 copy row 0's compressed cache)
    # benchmark.py capacity: the budget, the search's real runs, the bytes prediction beside the measured maximum
    capacity_budget_bytes: int | None = None
    capacity_max_batch: int | None = None  # largest batch whose whole generation fitted (0: not even batch 1)
    capacity_predicted_batch: int | None = None  # from weights + per-sequence KV + measured activation/workspace
    # {"batch"|"context", "fits", "peak_bytes", "reserved_bytes", "error", "seconds"}
    capacity_probes: list[dict] = field(default_factory=list)
    # positions the cache had seen when kv_cache_bytes, kv_live_bytes and kv_tokens_kept were read: the context, for
    # every method (DMS's single prefill is read after the context alone, engine.generate.kv_after_context), and
    # context + question under --query-aware. Held (kv_cache_bytes) and live (kv_live_bytes) differ where a cache
    # keeps what attention no longer sees (the hf engine masks DMS's evictions and reclaims nothing).
    kv_positions: float | None = None
    # --- quantized KV caches (methods/quantized.py): the format ("fp8", "int4[group=32,window=128]"), how the engine
    # held it ("simulated": codes stored, dequantized to bf16 for attention inside transformers' forward), and
    # kv_cache_bytes by part, from the cache's own tensors: {"data": codes, "scales": scales + zero points,
    # "window": bf16 tokens not quantized}
    kv_quant: str | None = None
    kv_quant_storage: str | None = None
    kv_bytes_parts: dict | None = None
    kv_bytes_parts_end: dict | None = None
    # --- benchmark.py fidelity (engine/fidelity.py): against vanilla on the same model and prompt, teacher-forced
    # over `fidelity_tokens` predicted tokens of a text's continuation: mean and max KL(vanilla || method) in nats,
    # top-1 agreement, perplexity of the true tokens (the method's and vanilla's)
    fidelity_kl: float | None = None
    fidelity_kl_max: float | None = None
    fidelity_top1: float | None = None
    fidelity_perplexity: float | None = None
    fidelity_perplexity_vanilla: float | None = None
    fidelity_tokens: int | None = None
    # --- quality runs (test_long_context.py --mode quality, run/quality.py): each sample answered once; no timing,
    # no peaks (those fields stay None); KV figures read from the compressed cache's tensors before the question.
    run_mode: str | None = None  # "quality" | None (a measured record: warm-up, repeats, memory pass); identity
    answer_batch: int | None = None  # samples decoded together with this one (1: alone)
    shared_prefill: bool | None = None  # its cache came from one prefill shared with the other methods
    # torchrun (ranks.py): the rank, host and GPU that measured this record; None in a single-process run
    rank: int | None = None
    host: str | None = None
    gpu: str | None = None

    def identity(self, *, across_engines: bool = False) -> tuple:
        """What makes two records the same cell (used by --resume, compare and check); named by IDENTITY_FIELDS.
        across_engines leaves the engine out: the same cell run by the hf and the fast engine."""
        return tuple(getattr(self, name) for name in IDENTITY_FIELDS if not (across_engines and name == "engine"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BenchmarkResult":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# A field's value must be of its annotation's type: a hand-edited `"ttft_s": "fast"` is refused when the file is read,
# not met as a crash in a table, a check or a resumed run.
_KINDS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "list": (list,), "dict": (dict,)}


def type_problem(data: dict) -> str | None:
    """The first field of a record dict whose value is not of its declared type, in words (None: all are)."""
    for f in fields(BenchmarkResult):
        if f.name not in data:
            continue
        value, annotation = data[f.name], str(f.type)
        if value is None:
            if "None" in annotation:
                continue
            return f"{f.name} is null"
        kind = annotation.split("|")[0].strip().split("[")[0]
        wanted = _KINDS.get(kind)
        if wanted and (not isinstance(value, wanted) or isinstance(value, bool) and kind != "bool"):
            return f"{f.name} is {value!r}, not {'a number' if kind in ('int', 'float') else 'a ' + kind}"
    return None


def duplicate_identity(results: list[BenchmarkResult]) -> BenchmarkResult | None:
    """The first record whose cell (identity) an earlier record already holds: two answers for one cell."""
    seen = set()
    for record in results:
        if record.identity() in seen:
            return record
        seen.add(record.identity())
    return None


def median_kv_bytes(records: list[BenchmarkResult], name: str = "kv_cache_bytes") -> float | None:
    """The median KV bytes held after the prefill (`name` "kv_live_bytes": live) over the records that measured them
    (statistics.median: the mean of the two middle values for an even count), None without any: one definition for
    the task table, the Pareto plot and --match-kv."""
    held = [getattr(r, name) for r in records if getattr(r, name) is not None]
    return float(statistics.median(held)) if held else None


FIELDS = [f.name for f in fields(BenchmarkResult)]
IDENTITY_FIELDS = ("task", "model", "weights", "method", "target_tokens", "depth", "needle", "prompt_id", "engine",
                   "max_new_tokens", "run_mode", "batch")
CONTRACT_FIELDS = FIELDS[: FIELDS.index("error") + 1]


def run_header(args_namespace=None, *, device=None, dtype=None, attn_implementation=None, seed=None, extra=None) -> dict:
    import torch
    import transformers

    header = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "arguments": {k: v for k, v in vars(args_namespace).items()} if args_namespace is not None else {},
        "git_commit": _git_commit(),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "kvpress": _version("kvpress"),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_driver": _driver_version(),
        "device": str(device) if device is not None else None,
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "attn_implementation": attn_implementation,
        "seed": seed,
    }
    header.update(extra or {})
    return header


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    if os.environ.get("KVCOMPRESS_GIT_COMMIT"):  # set where the tree travels without .git (e.g. a GPU machine)
        return os.environ["KVCOMPRESS_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


_OPEN: "weakref.WeakSet[ResultFile]" = weakref.WeakSet()  # the result files this process is writing


def files_written() -> list[Path]:
    """The result files this process has written a record to (what an interrupted run has kept)."""
    return [f.path for f in list(_OPEN) if f.path.exists()]


class ResultFile:
    """A result file being written: records are appended and the file is replaced atomically each time."""

    def __init__(self, path: Path, run: dict, resume: bool = False):
        """Refuses, before anything is measured, a directory, an existing file without --resume, and --resume onto
        a file written by another script or with other settings (its records would be mixed with these)."""
        self.path = Path(path)
        self.run = run
        self.results: list[BenchmarkResult] = []
        self._ids, self._ids_of, self._ids_len = set(), None, -1  # _identities()' set, the list and length it is of
        if self.path.is_dir():
            raise UserError(f"--out {self.path} is a directory; name a JSON file, e.g. {self.path / 'run.json'}")
        check_writable(self.path)
        lock = WriterLock.take(self.path)  # before reading: a second writer must not read a file in flight
        # released by close(), when this object goes, or when the process ends
        self.close = weakref.finalize(self, lock.release)
        self.journal = journal_path(self.path)
        self._journal = None  # the open journal while records wait for the next save
        self.resumed_from: dict = {}  # --resume: the header the file had (a quality run carries its time on)
        try:
            if self.journal.exists() and not resume:
                raise UserError(f"--out {self.path}: {self.journal.name} holds answers of a run killed before it "
                                f"saved them; pass --resume to keep them, or delete it to start again")
            if self.path.exists() or self.journal.exists():
                if not resume:
                    raise UserError(f"--out {self.path} already exists: pass --resume to continue it, or name a new "
                                    f"file")
                old_run, self.results = load(self.path) if self.path.exists() else ({}, [])
                if self.journal.exists():
                    journal_run, journaled = read_journal(self.journal)
                    old_run = old_run or journal_run
                    new = {r.identity() for r in journaled}
                    self.results = [r for r in self.results if r.identity() not in new] + journaled
                twice = duplicate_identity(self.results)
                if twice is not None:  # which of the two counts as done would be arbitrary
                    raise UserError(f"--resume: {self.path} holds the cell {twice.method} @ {twice.target_tokens} "
                                    f"({twice.prompt_id or twice.task}) twice; remove one of them or name a new "
                                    f"--out")
                self.resumed_from = old_run
                differs = resume_mismatch(old_run, self.results, run)
                if differs:
                    raise UserError(f"--resume: {self.path} {differs}; rerun with the same settings or name a new "
                                    f"--out")
                if self.journal.exists():
                    self.save()  # the killed run's journaled records into the file, the journal gone
        except BaseException:
            self.close()
            raise
        _OPEN.add(self)

    def done(self, record_identity: tuple) -> bool:
        return any(r.identity() == record_identity and r.error is None for r in self.results)

    def finished_identities(self) -> set[tuple]:
        """The cells the file holds without an error (what --resume skips)."""
        return {r.identity() for r in self.results if r.error is None}

    def add(self, result: BenchmarkResult) -> None:
        # A retried cell replaces its failed attempt rather than standing beside it.
        self.results = [r for r in self.results if r.identity() != result.identity()]
        self.results.append(result)
        self.save()

    def add_all(self, results: list[BenchmarkResult], write: bool = True) -> None:
        """Several records at once (a quality run's batch), each replacing a failed attempt of its cell; one write,
        or (`write` False: the caller saves later; a quality run saves every SAVE_EVERY_S seconds) one line per
        record appended to the journal, so a process killed before the next save loses none of them."""
        new = {r.identity() for r in results}
        known = self._identities()
        if new.isdisjoint(known):
            self.results.extend(results)
            known |= new
            self._ids_len = len(self.results)
        else:  # a retry: its failed attempt goes (the set is rebuilt for the new list when next asked)
            self.results = [r for r in self.results if r.identity() not in new] + list(results)
        if write:
            self.save()
        else:
            self._append(results)

    def _identities(self) -> set[tuple]:
        """The identities of self.results, kept across add_all calls: a quality run adds thousands of records in
        batches of ~20, and scanning every record at each batch cost seconds of a RULER 4K run (quadratic).
        Rebuilt when self.results is another list or another length than the set was made for."""
        if self._ids_of is not self.results or self._ids_len != len(self.results):
            self._ids = {r.identity() for r in self.results}
            self._ids_of, self._ids_len = self.results, len(self.results)
        return self._ids

    def _append(self, results: list[BenchmarkResult]) -> None:
        try:
            if self._journal is None:
                self._journal = open(self.journal, "a")
                if self._journal.tell() == 0:
                    self._journal.write(json.dumps({"run": self.run}, default=_jsonable) + "\n")
            self._journal.write("".join(json.dumps(file_record(r), default=_jsonable) + "\n" for r in results))
            self._journal.flush()  # in the kernel's page cache: a killed process loses nothing written
        except OSError as exc:
            raise UserError(f"cannot write {self.journal} ({exc.strerror or exc}): {self.path} holds the records "
                            f"of its last save; make room and rerun with --resume") from None

    def save(self) -> None:
        try:
            save(self.path, self.run, self.results)
        except OSError as exc:  # disk full, quota, a mount gone read-only: the atomic write left the last file whole
            raise UserError(f"cannot write {self.path} ({exc.strerror or exc}): it still holds the "
                            f"{len(self.results) - 1} records before this one; make room and rerun with --resume"
                            ) from None
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        with contextlib.suppress(FileNotFoundError):
            self.journal.unlink()  # every journaled record is in the file now


class WriterLock:
    """One writer per result file across processes: an exclusive flock on the sidecar `<out>.lock`, held while any
    ResultFile of this process on that path lives, and by the kernel until the process dies (SIGKILL included). Two
    runs naming the same --out would otherwise both start from "no file yet" and each rewrite the file with its own
    records only. Within one process the lock is shared (a test, or a resumed run, reopens the file it holds); a
    distributed run writes from rank 0 only, so the lock there is rank 0's."""

    _held: dict[str, "WriterLock"] = {}  # lock path -> the lock this process holds on it

    def __init__(self, lock_path: Path, fd: int):
        self.lock_path, self.fd, self.users = lock_path, fd, 0

    @classmethod
    def take(cls, path: Path) -> "WriterLock":
        lock_path = path.with_name(path.name + ".lock")
        key = os.path.abspath(lock_path)
        lock = cls._held.get(key)
        if lock is None:
            lock = cls(lock_path, _flock(lock_path, path))
            cls._held[key] = lock
        lock.users += 1
        return lock

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.fd >= 0:
            del WriterLock._held[os.path.abspath(self.lock_path)]
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)  # while still locked: a writer waiting on this inode then sees it gone
            os.close(self.fd)
            self.fd = -1


def _flock(lock_path: Path, path: Path) -> int:
    """An exclusive, non-blocking flock on lock_path, or UserError naming the other writer."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot write results to {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"--out {path} is being written by another run (it holds {lock_path}); wait for it "
                            f"to finish or name another --out") from None
        # The holder unlinks the lock file before unlocking it: a lock won on an unlinked inode is stale, retry.
        try:
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())  # who holds it, for a human
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def journal_path(path: Path) -> Path:
    """The sidecar where records wait between saves of a quality run (ResultFile.add_all with write False)."""
    return path.with_name(path.name + ".journal.jsonl")


def read_journal(path: Path) -> tuple[dict, list[BenchmarkResult]]:
    """(the run header, the records) of a journal a killed run left; a last line cut short by the kill is dropped."""
    run, results = {}, []
    lines = path.read_text().split("\n")
    for i, line in enumerate(lines):
        if not line:
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # written in part when the process died: its record is answered again
                break
            raise UserError(f"{path}: line {i + 1} is not JSON; delete the journal to start again") from None
        if i == 0 and isinstance(data, dict) and set(data) == {"run"}:
            run = data["run"]
            continue
        try:
            if not isinstance(data, dict) or type_problem(data):
                raise TypeError
            results.append(BenchmarkResult.from_dict(_expand_sequences(dict(data))))
        except TypeError:
            raise UserError(f"{path}: line {i + 1} is not a record; delete the journal to start again") from None
    return run, results


def save(path: Path, run: dict, results: list[BenchmarkResult]) -> None:
    """Write a whole result file atomically (ResultFile.save; also how an older file is rewritten in this layout)."""
    payload = {"schema_version": SCHEMA_VERSION, "run": run, "results": [file_record(r) for r in results]}
    write_json_atomic(path, payload)


# Per-head lists of a batch: per layer, batch x kv heads entries, sequence b's heads at b * Hkv + h.
PER_SEQUENCE_HEAD_FIELDS = ("kv_tokens_per_head", "kv_tokens_per_head_end")


def file_record(record: BenchmarkResult) -> dict:
    """A record as the file stores it: its per-head lists once per run of identical consecutive sequences, with
    `sequence_copies` saying how many each stands for, where that is shorter (a cloned batch of 270 stores 2)."""
    data = record.to_dict()
    copies = _sequence_runs(data)
    if copies is None:
        return data
    stored = {}
    for key, value in data.items():
        if key == PER_SEQUENCE_HEAD_FIELDS[0]:
            stored["sequence_copies"] = copies
        if key in PER_SEQUENCE_HEAD_FIELDS and value is not None:
            value = [_runs_kept(layer, copies, len(layer) // data["batch"]) for layer in value]
        stored[key] = value
    return stored


def _sequence_runs(data: dict) -> list[int] | None:
    """Lengths of the runs of consecutive sequences whose per-head counts are equal in every per-head field; None
    when there is nothing to fold (batch 1, no per-head lists, every sequence its own)."""
    batch = data.get("batch") or 1
    lists = [data.get(key) for key in PER_SEQUENCE_HEAD_FIELDS if data.get(key)]
    if batch < 2 or not lists or any(len(layer) % batch or not layer for value in lists for layer in value):
        return None

    def sequence(b: int) -> list:
        return [layer[b * (len(layer) // batch):(b + 1) * (len(layer) // batch)] for value in lists for layer in value]

    runs = [1]
    for b in range(1, batch):
        if sequence(b) == sequence(b - 1):
            runs[-1] += 1
        else:
            runs.append(1)
    return runs if len(runs) < batch else None


def _runs_kept(layer: list, copies: list[int], heads: int) -> list:
    """One block of `heads` entries per run: the run's first sequence."""
    starts = [sum(copies[:i]) for i in range(len(copies))]
    return [n for start in starts for n in layer[start * heads:(start + 1) * heads]]


def _runs_expanded(layer: list, copies: list[int]) -> list:
    """The inverse of _runs_kept: block i repeated copies[i] times."""
    heads = len(layer) // len(copies)
    return [n for i, c in enumerate(copies) for _ in range(c) for n in layer[i * heads:(i + 1) * heads]]


def _expand_sequences(record: dict) -> dict:
    """A stored record back to one block of kv heads per sequence (the inverse of file_record)."""
    copies = record.pop("sequence_copies", None)
    if copies is None:
        return record
    if (not isinstance(copies, list) or not copies or any(type(c) is not int or c < 1 for c in copies)
            or sum(copies) != record.get("batch", 1)):
        raise TypeError(f"sequence_copies {copies!r} are not positive counts summing to the batch")
    for key in PER_SEQUENCE_HEAD_FIELDS:
        value = record.get(key)
        if value is not None:
            if any(not isinstance(layer, list) or len(layer) % len(copies) for layer in value):
                raise TypeError(f"{key} does not hold one block of kv heads per entry of sequence_copies")
            record[key] = [_runs_expanded(layer, copies) for layer in value]
    return record


# What a resumed run must share with the file's header: its records would otherwise be mixed with other settings'.
RESUME_HEADER = ("task", "engine", "sampling", "max_new_tokens", "dtype", "attn_implementation", "mode")
RESUME_ARGUMENTS = ("model", "random_weights", "dms_model", "dms_revision", "haystack", "query_aware")


def resume_mismatch(old: dict, old_results: list[BenchmarkResult], new: dict) -> str | None:
    """The first setting where a file's header differs from a new run's, in words; None when they agree."""
    old_task = old.get("task") or next((r.task for r in old_results if r.task), None)  # headers before "task"
    if old_task is not None and new.get("task") is not None and old_task != new["task"]:
        return f"was written by another script (task {old_task!r}, this run is {new['task']!r})"
    for key in RESUME_HEADER[1:]:
        if key in old and key in new and old[key] != new[key]:
            return f"was written with {key} {old[key]!r}, this run has {new[key]!r}"
    old_args, new_args = old.get("arguments", {}), new.get("arguments", {})
    for key in RESUME_ARGUMENTS:
        if key in old_args and key in new_args and old_args[key] != new_args[key]:
            return f"was written with --{key.replace('_', '-')} {old_args[key]!r}, this run has {new_args[key]!r}"
    return None


def check_writable(path: Path) -> None:
    """Fail now, in one line, where a file could not be written later: a folder, a name too long (the probe has the
    name of write_json_atomic's temporary file), a read-only or missing place."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; name a file in it, e.g. {path / 'out.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=True):
            pass
    except OSError as exc:
        raise UserError(f"cannot write results to {path}: {exc.strerror or exc}") from None


def write_json_atomic(path: Path, payload: dict) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; result files are meant to be shared and diffed
        with os.fdopen(fd, "w") as f:
            f.write(json_text(payload) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_text(payload) -> str:
    """JSON as json.dump(indent=1) writes it, except that a list of numbers is one line and a list of such lists one
    line per row: a per-head array is a few lines, not one line per integer, so a re-run diffs in what changed."""
    return _layout(json.loads(json.dumps(payload, default=_jsonable)), 0)  # plain JSON values first (tensors, ...)


def _layout(value, depth: int) -> str:
    inner = " " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(key)}: {_layout(item, depth + 1)}" for key, item in value.items()]
    elif isinstance(value, list) and value and not _numbers(value):
        if all(isinstance(item, list) and _numbers(item) for item in value):
            items = [inner + json.dumps(item) for item in value]
        else:
            items = [inner + _layout(item, depth + 1) for item in value]
    else:
        return json.dumps(value)
    brackets = "{}" if isinstance(value, dict) else "[]"
    return brackets[0] + "\n" + ",\n".join(items) + "\n" + " " * depth + brackets[1]


def _numbers(values: list) -> bool:
    return all(v is None or isinstance(v, (bool, int, float)) for v in values)


def record_json(record: BenchmarkResult) -> str:
    """One record as one line of JSON (the DMS child streams its records so)."""
    return json.dumps(record.to_dict(), default=_jsonable)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def load(path: Path) -> tuple[dict, list[BenchmarkResult]]:
    """Read a result file; a file that is not one (missing, truncated, other schema) raises UserError in one line."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON (truncated or corrupt?): {exc.msg if hasattr(exc, 'msg') else exc}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise UserError(f"{path}: not a kvcompress result file (no 'results' list)")
    version = data.get("schema_version")
    if type(version) is not int:
        raise UserError(f"{path}: schema_version {version!r} is not a version number (this kvcompress reads "
                        f"{READABLE})")
    if version not in READABLE_VERSIONS:
        why = ("written by a newer kvcompress: upgrade to read it" if version > SCHEMA_VERSION
               else "an older format with no migration")
        raise UserError(f"{path}: schema_version {version} is not supported ({why}; this kvcompress reads "
                        f"{READABLE}")
    run = data.get("run", {})
    if not isinstance(run, dict):
        raise UserError(f"{path}: the 'run' header is not an object")
    results = []
    for i, record in enumerate(data["results"]):
        if not isinstance(record, dict):
            raise UserError(f"{path}: record {i} is not an object")
        if problem := type_problem(record):
            raise UserError(f"{path}: record {i} is malformed ({problem})")
        try:
            results.append(BenchmarkResult.from_dict(_expand_sequences(dict(record))))
        except TypeError as exc:
            raise UserError(f"{path}: record {i} is malformed ({exc})") from None
    return run, results
