"""Options shared by all four scripts, their validation (one-line errors), and the metric definitions for --help."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import importlib.util
import logging
import math
import os
import re
import sys
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from kvcompress.errors import UserError
from kvcompress.hub import go_offline, hub_available, offline_by_choice
from kvcompress.methods import Method, as_remote_dms, parse_methods
from kvcompress.ranks import OtherRankDone, RunStopped, local_device
from kvcompress.tasks.haystack import SOURCES

if TYPE_CHECKING:  # annotations only: --help must not wait for torch
    import torch

    from kvcompress import models
    from kvcompress.engine.generate import GenerationSettings

# torch, transformers and kvpress are imported only once the arguments are parsed (resolve): --help and a bad
# option answer at once. The registered model names are written out here for the same reason (a test keeps them
# equal to models.MODELS).
MODEL_NAMES = ("qwen3-8b", "dms-8x", "tiny", "tiny-dms", "smollm2")

METRICS = """\
Metrics (every script, every method, measured the same way):
  TTFT        start of the context prefill -> first sampled token on the host; includes the press's compression.
              GPU: CUDA events; CPU: wall clock (CPU figures are pipeline checks, not performance).
  TPOT        (end-to-end - TTFT) / (output tokens - 1), in ms; decode tok/s = 1000 / TPOT (per sequence).
  prefill tok/s  input tokens / TTFT.
  peak prefill / peak decode  the allocator's peak during each phase, reset when the phase starts
              (CPU: the process's peak RSS).
  KV bytes    summed over the cache's own tensors right after compression (and at the end of decoding).
  kept / achieved  live tokens per layer (mean over heads) and 1 - kept / prefilled positions.
  mem saved   whether the KV tensors really hold fewer bytes than uncompressed; false for mask-only presses.
  Each cell: one warm-up generation, then --repeats timed ones; medians, with IQRs in the JSON.
  Timing runs generate exactly --max-new-tokens tokens (EOS ignored) so every method does the same work.
Batches (--batch N): N prompts of one length with different needles (needle and sampling seeds seed..seed+N-1),
  each prefilled and compressed on its own (as a server admits requests), then decoded together, one token per
  sequence per step. TTFT = median of the sequences' own TTFTs; admitted = first prefill's start -> last sequence's
  first token, every cache moved into the batch's decode cache; TPOT = one decode step of the whole batch, timed
  over the steps after the first (the first captures the CUDA graph of this batch and shape, start-up work for a
  server); it is vLLM's TPOT, and its mean ITL too (every step gives each sequence a token); aggregate tok/s =
  batch x 1000 / TPOT; output throughput (vLLM) = batch x output tokens / end-to-end. KV bytes and peaks are the
  whole batch's; each batched generation starts from the weights alone.
Protocol: the context is prefilled (and compressed), then the question is fed uncompressed (kvpress's
  query-agnostic protocol); --query-aware compresses the question too. DMS-8x allows one prefill per cache, so
  its context and question are prefilled together.
"""

DEFAULT_METHODS = "vanilla,dms-8x,knorm@0.5,expected_attention@0.5,snapkv@0.5,streaming_llm@0.5"


@dataclass
class RunConfig:
    spec: "models.ModelSpec"
    preset: str | None
    device: "torch.device"
    dtype: "torch.dtype | None"
    attn_implementation: str
    random_weights: bool
    methods: list[Method]
    contexts: list[int]
    settings: "GenerationSettings"
    repeats: int
    engine: str
    out: Path
    resume: bool
    haystack: str
    dms_model: str
    dms_revision: str | None
    args: argparse.Namespace
    batches: list[int] = dataclasses.field(default_factory=lambda: [1])  # --batch: sequences decoded together
    admission: str = "each"  # --admission: how a batch's sequences are prefilled (engine.batch)
    dms_model_given: bool = False  # --dms-model named on the command line (not a default): native DMS runs on it


@dataclass(frozen=True)
class Defaults:
    """Per-script defaults for the options a preset changes."""

    methods: str = DEFAULT_METHODS
    contexts: str = "8K,16K,32K"
    max_new_tokens: int = 512
    repeats: int = 5  # the IQR of 5 is the 2nd-4th spread: one slow repeat cannot fail check's noise bar
    dms_model: str = "dms-8x"  # the checkpoint behind the dms-8x method (test_dms_inference.py's tiny: tiny-dms)


TINY = Defaults(methods=DEFAULT_METHODS, contexts="256,512", max_new_tokens=32, repeats=2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as one line (`error: ...`, exit 2) like every other refusal, not usage + error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parser(prog: str, description: str, defaults: Defaults = Defaults(), tiny: Defaults = TINY,
           hidden: tuple[str, ...] = (), without: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The shared options. `hidden` names options (by dest) a script replaces with its own: they stay out of --help;
    `without` names batch options a script has no use for: they are not defined (an error, not silently ignored)."""
    p = ArgumentParser(prog=prog, description=description, epilog=METRICS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(_defaults=defaults, _tiny=tiny)
    methods, contexts, max_new_tokens, repeats = (defaults.methods, defaults.contexts, defaults.max_new_tokens,
                                                  defaults.repeats)
    g = p.add_argument_group("what to run")
    g.add_argument("--preset", choices=["tiny"], help="tiny: a 2-layer Qwen3 built in code, CPU, a few hundred "
                   "tokens (pipeline check). Chosen automatically when no GPU is present.")
    g.add_argument("--model", default=None, help=f"model: {', '.join(MODEL_NAMES)}, a Hub id or a local folder "
                   "(default qwen3-8b)")
    g.add_argument("--methods", default=None, help="comma-separated methods: vanilla, dms-8x, or kvpress presses "
                   f"as name@ratio, e.g. knorm@0.25,adakv+snapkv@0.5 (default {methods}); see test_kvpress_api.py --list")
    g.add_argument("--contexts", default=None, help=f"prompt lengths in tokens, e.g. 8K,16K,32K or 1000 (default {contexts}; tiny: {tiny.contexts})")
    g.add_argument("--random-weights", action="store_true", help="Qwen3-8B architecture with random bf16 weights, "
                   "built on the GPU: true speed and memory, meaningless answers (recorded as weights: random)")
    g.add_argument("--haystack", default="noise", choices=list(SOURCES), help="filler text: " +
                   "; ".join(f"{k}: {v}" for k, v in SOURCES.items()))
    g = p.add_argument_group("how to measure")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"output tokens (default {max_new_tokens}; tiny: {tiny.max_new_tokens})")
    g.add_argument("--repeats", type=int, default=None,
                   help=f"timed repeats after one warm-up (default {repeats}; tiny: {tiny.repeats})")
    g.add_argument("--engine", choices=["auto", "fast", "hf"], default="auto", help="decode engine: hf = transformers' "
                   "own forward (what kvpress users run); fast = static buffers + CUDA graph + GQA-native attention. "
                   "auto = fast on CUDA, hf on CPU")
    if "batch" not in without:
        g.add_argument("--batch", default="1", help="sequences decoded together, a list: 1,8,32 (default 1). Each "
                       "sequence is prefilled and compressed on its own with its own needle, then all decode together")
        g.add_argument("--admission", choices=["each", "cloned"], default="each", help="each: every sequence of a "
                       "batch is prefilled (default); cloned: the first and the last are, the rows between copy the "
                       "first's compressed cache (the same bytes and decode work, two prefills instead of N; TTFT is "
                       "then the median of two)")
    g.add_argument("--query-aware", action="store_true", help="compress the question together with the context")
    g.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6)")
    g.add_argument("--top-k", type=int, default=20, help="sample among the k most likely tokens, 0 = all (default "
                   "20, with --temperature and --top-p: Qwen3-8B's own generation config)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold (default 0.95)")
    g.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    g.add_argument("--seed", type=int, default=0, help="seed for sampling, needles and random weights (default 0)")
    g.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    g.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="default bfloat16 on GPU, float32 on CPU")
    g.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"],
                   help="attention implementation for vanilla and presses (default sdpa)")
    g.add_argument("--dms-model", default=None, help="the DMS checkpoint for the dms-8x method: dms-8x "
                   "(nvidia/Qwen3-8B-DMS-8x), a Hub id or a local folder, or tiny-dms (the tiny Qwen3 with a "
                   f"DMS-style paged cache, loaded through trust_remote_code on CPU) (default {defaults.dms_model}; "
                   f"tiny: {tiny.dms_model})")
    g.add_argument("--dms-impl", choices=["native", "remote"], default="native", help="how dms-8x runs: native = "
                   "DMS's rule on transformers' Qwen3 in this process, both engines (default); remote = the "
                   "checkpoint's own code (needs flash-attn), hf engine, its own process (same as dms-8x-remote)")
    g.add_argument("--dms-revision", default=None, help="Hub revision of the DMS checkpoint (default: the reviewed revision pinned in "
                   "kvcompress/models.py)")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=out_path, default=None, help="JSON result file (default results/<script>-<time>.json)")
    g.add_argument("--resume", action="store_true", help="keep the records already in --out and skip those cells")
    for action in p._actions:
        if action.dest in hidden:
            action.help = argparse.SUPPRESS
    return p


def out_path(text: str) -> Path:
    """--out as a Path; a name ending in a separator means a folder, which Path() would silently turn into a file."""
    if text.endswith(("/", os.sep)):
        return _FolderPath(text)
    return Path(text)


class _FolderPath(type(Path())):
    """--out written as a folder (`dir/`): refused by `check_cheap` in one line, not turned into a file named dir."""


# torch's seeds and numpy's (the needles) both take a value in [0, 2**32)
MAX_SEED = 2**32 - 1


def check_cheap(args: argparse.Namespace, fixed_length: bool = True) -> None:
    """Every check that needs neither torch nor a model, before torch is imported: a typo answers in < 1 s.
    fixed_length=False: a quality run (answers stop at end-of-sequence)."""
    if isinstance(args.out, _FolderPath):
        raise UserError(f"--out {args.out}/ names a folder; name a JSON file, e.g. {args.out / 'run.json'}")
    if args.out is not None and Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a directory; name a JSON file, e.g. {Path(args.out) / 'run.json'}")
    if getattr(args, "resume", False) and args.out is None:
        raise UserError("--resume continues a result file: name it with --out")
    if not math.isfinite(args.temperature) or args.temperature <= 0:
        raise UserError(f"--temperature must be a finite number > 0, got {args.temperature:g}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p:g}")
    if args.top_k < 0:
        raise UserError("--top-k must be 0 (the whole vocabulary) or a positive number of tokens")
    if not 0 <= args.seed <= MAX_SEED:
        raise UserError(f"--seed must be in [0, {MAX_SEED}] (torch's and numpy's seed range), got {args.seed}")
    if args.max_new_tokens is not None and args.max_new_tokens < 2:
        raise UserError("--max-new-tokens must be at least 2 (TPOT needs two tokens)")
    if args.repeats is not None and args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    if args.methods is not None:
        parse_methods(args.methods)
    if args.contexts is not None:
        parse_contexts(args.contexts)
    if parse_batches(getattr(args, "batch", "1")) != [1] and not fixed_length:
        raise UserError("--batch times batched decode; quality runs stop at end-of-sequence and are batch 1")
    if args.model is not None and _is_path(args.model) and not Path(args.model).expanduser().exists():
        raise UserError(f"--model {args.model}: no such folder (a local checkpoint must exist; a Hub id is "
                        "owner/name)")


def _is_path(name: str) -> bool:
    """A model name written as a path (a Hub id is owner/name: no leading /, ., ~ and one slash at most)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def parse_contexts(text: str) -> list[int]:
    values = []
    for part in filter(None, (s.strip() for s in text.split(","))):
        match = re.fullmatch(r"(\d+)\s*([kK]?)", part)
        if not match:
            raise UserError(f"context {part!r} is not a token count (write 8K, 32768, ...)")
        n = int(match[1]) * (1024 if match[2] else 1)
        if n < 64:
            raise UserError(f"context {part!r} is too short (at least 64 tokens)")
        if n in values:  # both would be the same cell, and one record would replace the other
            raise UserError(f"--contexts names {n} tokens twice")
        values.append(n)
    if not values:
        raise UserError("--contexts is empty")
    return values


def parse_batches(text: str) -> list[int]:
    values = []
    for part in filter(None, (s.strip() for s in str(text).split(","))):
        if not part.isdigit() or int(part) < 1:
            raise UserError(f"batch {part!r} is not a positive whole number (write 1,8,32)")
        values.append(int(part))
    if not values:
        raise UserError("--batch is empty")
    return list(dict.fromkeys(values))


def resolve(args: argparse.Namespace, script: str, *, fixed_length: bool = True,
            output_in_context: bool = False) -> RunConfig:
    """Validate everything that can be checked before loading a model; apply the tiny preset when there is no GPU.
    `output_in_context`: every answer's tokens count within its context length (RULER's tasks in a quality run:
    prompt + tokens_to_generate <= context), so a context fits the model where it is at most its positions."""
    check_cheap(args, fixed_length)
    import torch

    from kvcompress import models
    from kvcompress.engine.generate import GenerationSettings
    from kvcompress.engine.sampling import SamplingConfig

    device = _device(args.device)
    if args.random_weights and device.type != "cuda":
        raise UserError("--random-weights measures GPU speed and memory; it needs a CUDA GPU (use --preset tiny on CPU)")
    preset = args.preset
    if preset is None and args.model is None and device.type != "cuda":
        print("No CUDA GPU: running the tiny preset on CPU (a pipeline check; its figures are not performance).")
        preset = "tiny"
    fill = args._tiny if preset == "tiny" else args._defaults
    dms_model_given = args.dms_model is not None
    for key in ("methods", "contexts", "max_new_tokens", "repeats", "dms_model"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(fill, key))
    if preset == "tiny":
        args.model = args.model or "tiny"
        if args.random_weights:
            raise UserError("--random-weights builds Qwen3-8B; it cannot be combined with --preset tiny")
    spec = models.resolve_spec(args.model or "qwen3-8b")
    if device.type == "cpu" and spec.name in ("qwen3-8b", "dms-8x"):
        raise UserError(f"{spec.name} needs a GPU (16 GB of bf16 weights); on CPU use --preset tiny")
    if args.attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise UserError("--attn flash_attention_2 needs the flash-attn package (pip install flash-attn "
                        "--no-build-isolation); or use --attn sdpa")
    if args.max_new_tokens < 2:
        raise UserError("--max-new-tokens must be at least 2 (TPOT needs two tokens)")
    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    methods = parse_methods(args.methods)
    if getattr(args, "dms_impl", "native") == "remote":
        methods = as_remote_dms(methods)
    # native DMS runs on the main model when its weights are random (it adds no weights): no checkpoint to load
    shares_model = models.dms_runs_on_main(spec, random_weights=args.random_weights, dms_model_given=dms_model_given)
    loads_dms = any(m.needs_dms_checkpoint and (m.runs_in_child or not shares_model) for m in methods)
    if any(m.needs_dms_checkpoint for m in methods):
        models.resolve_spec(args.dms_model)  # an unknown --dms-model fails now, even where the main model serves
    dms_spec = models.resolve_spec(args.dms_model) if loads_dms else None
    if spec.name == "tiny" and dms_spec is not None and dms_spec.name == "dms-8x" and not dms_model_given:
        raise UserError("dms-8x-remote on the tiny preset runs a DMS checkpoint's own code: add --dms-model tiny-dms "
                        "(the tiny DMS fixture; the default, dms-8x, is the 8B checkpoint: GPU, flash-attn, the Hub)")
    # an unknown, unreachable or incomplete model fails now, not after the other methods ran
    for needed in filter(None, (spec if any(not m.needs_dms_checkpoint for m in methods) else None, dms_spec)):
        _check_reachable(needed, random_weights=args.random_weights)
    contexts = parse_contexts(args.contexts)
    batches = parse_batches(getattr(args, "batch", "1"))
    limit = spec.max_positions
    new_tokens = 0 if output_in_context else args.max_new_tokens
    too_long = [c for c in contexts if limit and c + new_tokens > limit]
    if too_long:
        beyond = f" + {new_tokens} new tokens" if new_tokens else ""
        raise UserError(f"context {too_long[0]}{beyond} exceeds {spec.name}'s {limit} positions")
    engine = args.engine if args.engine != "auto" else ("fast" if device.type == "cuda" else "hf")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = args.out or Path("results") / f"{script}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    sampling = SamplingConfig(args.temperature, args.top_p, args.greedy, args.seed, args.top_k)
    # fixed_length=False for quality runs (test_long_context.py): end-of-sequence ends the answer.
    settings = GenerationSettings(args.max_new_tokens, sampling, fixed_length=fixed_length,
                                  query_aware=args.query_aware)
    return RunConfig(spec, preset, device, dtype, args.attn, args.random_weights, methods, contexts, settings,
                     args.repeats, engine, out, args.resume, args.haystack, args.dms_model, args.dms_revision, args,
                     batches, getattr(args, "admission", "each"), dms_model_given=dms_model_given)



def _device(text: str | None):
    """The device asked for; under torchrun, `cuda` is this rank's GPU (ranks.local_device)."""
    return local_device(_asked_device(text))


def _asked_device(text: str | None):
    import torch

    if not text:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {text!r} is not a device: write cuda, cuda:1 or cpu") from None
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"--device {text}: only cuda and cpu are supported (the engine times with CUDA events "
                        "or the CPU's wall clock)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but no CUDA GPU is visible")
    if device.type == "cpu" and device.index not in (None, 0):
        raise UserError(f"--device {text}: there is one CPU device; write cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {text}: only {torch.cuda.device_count()} CUDA GPU(s) are visible "
                        f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device


def _check_reachable(spec, *, random_weights: bool) -> None:
    """A local folder must hold a config; a Hub model needs the Hub or the local cache: say so in one line instead of
    retrying the network for minutes."""
    if spec.hub_id is None:
        return  # built in code
    folder = Path(spec.hub_id)
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise UserError(f"--model {spec.hub_id}: the folder has no config.json (not a transformers checkpoint)")
        return
    if offline_by_choice() or hub_available():
        return
    go_offline()
    if random_weights and spec.architecture:
        return  # the architecture is written out; the tokenizer has an offline fallback
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec.hub_id, "config.json", revision=spec.revision), str):
        return
    raise UserError(f"the Hugging Face Hub is unreachable and {spec.hub_id} is not in the local cache "
                    "(check the network, or set HF_HUB_OFFLINE=1 to use cached files only)")


def main(fn):
    """Run a script's main: user errors become one line on stderr and exit 2; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(argv=None):
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            return fn(argv)
        except OtherRankDone:  # torchrun: rank 0 writes the file and prints the tables
            return 0
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            if exc.errno not in ENVIRONMENT_ERRNOS:
                print_unexpected(exc)
                return 1
            # the machine, not the code: a full disk, a read-only or forbidden place, a name too long
            print(f"error: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(_kept("interrupted"), file=sys.stderr)
            return 130
        except RunStopped:  # SIGTERM to the writer past the part of a run that names the missing cells (tables)
            torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
            print(_kept("stopped by SIGTERM" + (" (torchrun stops every rank when one fails)" if torchrun else "")),
                  file=sys.stderr)
            return 143
        except Exception as exc:  # noqa: BLE001 - last resort: still one line, details on request
            print_unexpected(exc)
            return 1

    return wrapper


def _kept(what: str) -> str:
    from kvcompress.results import files_written

    written = files_written()
    return (f"{what}: every finished record is already in the output file (" + ", ".join(map(str, written)) + ")"
            if written else f"{what} before any record was finished: no result file was written")


ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}


def print_unexpected(exc: BaseException) -> None:
    """A bug's one line (and its traceback with KVCOMPRESS_DEBUG=1)."""
    if os.environ.get("KVCOMPRESS_DEBUG"):
        traceback.print_exception(exc)
    print(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
          "(set KVCOMPRESS_DEBUG=1 for the traceback)", file=sys.stderr)
