"""Probe the scripts with bad inputs (issue 22's list and its neighbours) and classify how each is answered.

    uv run python tools/bad_inputs.py                # every case, one at a time (about 10 minutes on 2 cores)
    uv run python tools/bad_inputs.py --only check   # the cases whose name contains "check"
    uv run python tools/bad_inputs.py --list         # the cases, without running them

Each case is a command line (plus an environment and the files it names, made once in a temporary folder) run as a
user would run it: a subprocess on the tiny preset, no GPU (CUDA_VISIBLE_DEVICES=""), HF_HUB_OFFLINE=1, a timeout.
Its answer is one of:
  one-line    exit 2, stderr is one line starting with "error:" (no traceback, no "unexpected")
  crash       a traceback, "unexpected ...", or exit 1 with an error line: a crash path
  accepted    exit 0 on an input that should have been refused
  misleading  exit 0 where the case is flagged as misleading when accepted (the figures or the verdict mislead)
  hang        the timeout ran out
  works       exit 0 where exit 0 is the right answer (a case that must work: a read-only cache, say)
  other       anything else (exit 1 with a FAIL verdict, several lines on exit 2, ...): read its line
The counts per class come last. It is a tool, not part of CI: the tests hold each case that was fixed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
B = "benchmark.py --preset tiny --methods vanilla --contexts 256 --max-new-tokens 2 --repeats 1"
L = "test_long_context.py --preset tiny --methods vanilla --contexts 1K --max-new-tokens 2 --tasks niah --depths 0.5"
D = "test_dms_inference.py --preset tiny --methods vanilla --max-new-tokens 2"
K = "test_kvpress_api.py --preset tiny --context 256 --max-new-tokens 2 --repeats 1 --presses knorm --ratios 0.5"
C = ("benchmark.py capacity --preset tiny --methods vanilla --contexts 256 --max-new-tokens 2 --search-tokens 2 "
     "--max-batch 2 --search-runs 1")


@dataclass
class Case:
    name: str
    command: str  # placeholders: {new} (a fresh result path), {tmp} and the files made by make_files
    env: dict = field(default_factory=dict)
    works: bool = False  # exit 0 is the right answer
    misleading: bool = False  # exit 0 here misleads (flagged by hand)


def cases() -> list[Case]:
    c = Case
    return [
        # ---- sampling, seeds, lengths (benchmark.py) ----------------------------------------------------------------
        c("temperature nan", B + " --temperature nan --out {new}"),
        c("temperature inf", B + " --temperature inf --out {new}"),
        c("temperature 0", B + " --temperature 0 --out {new}"),
        c("temperature -1", B + " --temperature -1 --out {new}"),
        c("top-p 0", B + " --top-p 0 --out {new}"),
        c("top-p 1.5", B + " --top-p 1.5 --out {new}"),
        c("top-p nan", B + " --top-p nan --out {new}"),
        c("top-k -1", B + " --top-k -1 --out {new}"),
        c("seed huge", B + " --seed 99999999999999999999999 --out {new}"),
        c("seed -1", B + " --seed -1 --out {new}"),
        c("seed abc", B + " --seed abc --out {new}"),
        c("max-new-tokens 1", B + " --max-new-tokens 1 --out {new}"),
        c("max-new-tokens 0", B + " --max-new-tokens 0 --out {new}"),
        c("max-new-tokens abc", B + " --max-new-tokens abc --out {new}"),
        c("repeats 0", B + " --repeats 0 --out {new}"),
        c("repeats -2", B + " --repeats -2 --out {new}"),
        c("batch 0", B + " --batch 0 --out {new}"),
        c("batch abc", B + " --batch abc --out {new}"),
        c("batch empty", B + " --batch , --out {new}"),
        c("admission nope", B + " --admission nope --out {new}"),
        c("unknown option", B + " --frobnicate --out {new}"),
        # ---- devices, models, engines ------------------------------------------------------------------------------
        c("device cpu:5", B + " --device cpu:5 --out {new}"),
        c("device cuda without a GPU", B + " --device cuda --out {new}"),
        c("device cuda:7", B + " --device cuda:7 --out {new}"),
        c("device mps", B + " --device mps --out {new}"),
        c("device foo", B + " --device foo --out {new}"),
        c("model /nonexistent/path", B + " --model /nonexistent/path --out {new}"),
        c("model ./nonexistent", B + " --model ./nonexistent --out {new}"),
        c("model unknown name", B + " --model no-such-model --out {new}"),
        c("model folder without config", B + " --model {tmp} --out {new}"),
        c("engine warp", B + " --engine warp --out {new}"),
        c("dtype float8", B + " --dtype float8 --out {new}"),
        c("attn flash_attention_2 without flash-attn", B + " --attn flash_attention_2 --out {new}"),
        c("random weights on CPU", "benchmark.py --random-weights --device cpu --out {new}"),
        c("random weights with tiny", B + " --random-weights --out {new}"),
        c("haystack nope", B + " --haystack nope --out {new}"),
        c("dms-model nosuch", B + " --methods dms-8x --dms-model nosuch --out {new}"),
        c("qwen3-8b on CPU", "benchmark.py --model qwen3-8b --device cpu --out {new}"),
        # ---- contexts ---------------------------------------------------------------------------------------------
        c("contexts 256,256", B.replace("--contexts 256", "--contexts 256,256") + " --out {new}"),
        c("contexts 1K,1024", B.replace("--contexts 256", "--contexts 1K,1024") + " --out {new}"),
        c("contexts 0", B.replace("--contexts 256", "--contexts 0") + " --out {new}"),
        c("contexts abc", B.replace("--contexts 256", "--contexts abc") + " --out {new}"),
        c("contexts empty", B.replace("--contexts 256", "--contexts ,") + " --out {new}"),
        c("contexts 9000 past tiny's positions", B.replace("--contexts 256", "--contexts 9000") + " --out {new}"),
        c("contexts -256", B.replace("--contexts 256", "--contexts=-256") + " --out {new}"),
        # ---- methods ----------------------------------------------------------------------------------------------
        c("option contradicts @ratio", B + " --methods 'knorm@0.5[compression_ratio=0.9]' --out {new}"),
        c("option value abc", B + " --methods 'snapkv@0.5[window_size=abc]' --out {new}"),
        c("option value 0 refused by kvpress", B + " --methods 'decoding+knorm[compression_interval=0]' --out {new}"),
        c("option value negative target_size", B + " --methods 'decoding+knorm[target_size=-4]' --out {new}"),
        c("threshold abc", B + " --methods 'dmspress+knorm[threshold=abc]' --out {new}"),
        c("unknown option name", B + " --methods 'knorm@0.5[nosuch=1]' --out {new}"),
        c("option without =", B + " --methods 'knorm@0.5[window]' --out {new}"),
        c("ratio 1.5", B + " --methods knorm@1.5 --out {new}"),
        c("ratio -0.5", B + " --methods knorm@-0.5 --out {new}"),
        c("ratio abc", B + " --methods knorm@abc --out {new}"),
        c("ratio missing", B + " --methods knorm --out {new}"),
        c("unknown press", B + " --methods nosuch@0.5 --out {new}"),
        c("methods twice", B + " --methods vanilla,vanilla --out {new}"),
        c("methods empty", B + " --methods , --out {new}"),
        c("dmspress without threshold", B + " --methods dmspress+knorm --out {new}"),
        c("budget 0tok", B + " --methods knorm@0tok --out {new}"),
        c("budget on a self-sizing press", B + " --methods decoding+knorm@64tok --out {new}"),
        c("vanilla with a ratio", B + " --methods vanilla@0.5 --out {new}"),
        c("dms-8x with a ratio", B + " --methods dms-8x@0.5 --out {new}"),
        c("wrapper alone", B + " --methods adakv@0.5 --out {new}"),
        c("scorer before +", B + " --methods knorm+snapkv@0.5 --out {new}"),
        c("every cell fails (qfilter offline)", B + " --methods qfilter@0.5 --out {new}", misleading=True),
        # ---- output files -----------------------------------------------------------------------------------------
        c("out dir/", B + " --out {tmp}/newdir/"),
        c("out an existing folder", B + " --out {tmp}"),
        c("out /proc", B + " --out /proc/forbidden/x.json"),
        c("out a file name too long", B + " --out {tmp}/" + "x" * 250 + ".json"),
        c("out exists without --resume", B + " --out {good_copy}"),
        c("resume without --out", B + " --resume"),
        c("resume onto duplicates", B + " --resume --out {dup}"),
        c("resume onto ttft_s fast", B + " --resume --out {fast}"),
        c("resume onto truncated JSON", B + " --resume --out {truncated}"),
        c("resume onto another script's file", L + " --resume --out {good_copy}"),
        c("resume with other settings", B + " --max-new-tokens 3 --resume --out {good_copy}"),
        # ---- the asset cache --------------------------------------------------------------------------------------
        c("KVCOMPRESS_CACHE at a file", B + " --out {new}", env={"KVCOMPRESS_CACHE": "{plain}"}),
        c("KVCOMPRESS_CACHE at a file, paul_graham", B + " --haystack paul_graham --out {new}",
          env={"KVCOMPRESS_CACHE": "{plain}"}),
        c("KVCOMPRESS_CACHE in /proc (unwritable)", B + " --methods vanilla --out {new}",
          env={"KVCOMPRESS_CACHE": "/proc/kvcompress-cache"}, works=True),
        c("KVCOMPRESS_CACHE empty", B + " --methods vanilla --out {new}", env={"KVCOMPRESS_CACHE": ""}, works=True),
        # ---- test_long_context.py ---------------------------------------------------------------------------------
        c("needles 0", L + " --needle multikey --needles 0 --out {new}"),
        c("needles -3", L + " --needle multivalue --needles -3 --out {new}"),
        c("trials 0", L + " --trials 0 --out {new}"),
        c("questions 0", L + " --questions 0 --out {new}"),
        c("depths 1.5", L + " --depths 1.5 --out {new}"),
        c("depths abc", L + " --depths abc --out {new}"),
        c("tasks nosuch", L.replace("--tasks niah", "--tasks nosuch") + " --out {new}"),
        c("sample and greedy", L + " --sample --greedy --out {new}"),
        c("thinking with 8 tokens", L + " --thinking --max-new-tokens 8 --out {new}"),
        c("match-kv without a file", L + " --match-kv dms-8x --out {new}"),
        c("match-from missing", L + " --match-kv dms-8x --match-from {missing} --out {new}"),
        c("long-context batch 4", L + " --batch 4 --out {new}"),
        c("long-context questions with dms-8x", L + " --questions 2 --methods vanilla,dms-8x --out {new}"),
        # ---- test_dms_inference.py --prompts ------------------------------------------------------------------------
        c("prompts thinking \"false\"", D + " --prompts {p_thinking} --out {new}"),
        c("prompts missing", D + " --prompts {missing} --out {new}"),
        c("prompts empty", D + " --prompts {p_empty} --out {new}"),
        c("prompts bad JSON", D + " --prompts {p_badjson} --out {new}"),
        c("prompts id twice", D + " --prompts {p_dupid} --out {new}"),
        c("prompts unknown key", D + " --prompts {p_unknown} --out {new}"),
        c("prompts empty prompt", D + " --prompts {p_blank} --out {new}"),
        c("prompts past the positions", D + " --prompts {p_long} --out {new}"),
        c("prompts a folder", D + " --prompts {tmp} --out {new}"),
        # ---- test_kvpress_api.py ----------------------------------------------------------------------------------
        c("plot into /proc", K + " --plot /proc/forbidden/p.png --out {new}"),
        c("plot into a folder", K + " --plot {tmp} --out {new}"),
        c("ratios 1.5", K.replace("--ratios 0.5", "--ratios 1.5") + " --out {new}"),
        c("ratios abc", K.replace("--ratios 0.5", "--ratios abc") + " --out {new}"),
        c("presses nosuch", K.replace("--presses knorm", "--presses nosuch") + " --out {new}"),
        c("press sweep with --methods", K + " --methods knorm@0.5 --out {new}"),
        c("press sweep two contexts", K.replace("--context 256", "--context 256,512") + " --out {new}"),
        # ---- capacity ---------------------------------------------------------------------------------------------
        c("capacity budget 1B", C + " --budget 1B --out {new}"),
        c("capacity budget abc", C + " --budget abc --out {new}"),
        c("capacity budget 0", C + " --budget 0 --out {new}"),
        c("capacity budget -5GiB", C + " --budget=-5GiB --out {new}"),
        c("capacity --batch (was hidden, ignored)", C + " --batch 4 --out {new}"),
        c("capacity --admission", C + " --admission cloned --out {new}"),
        c("capacity methods typo", C.replace("--methods vanilla", "--methods knrom@0.5") + " --out {new}"),
        c("capacity search-tokens 1", C + " --search-tokens 1 --out {new}"),
        c("capacity max-batch 0", C + " --max-batch 0 --out {new}"),
        c("capacity search-runs 0", C + " --search-runs 0 --out {new}"),
        c("capacity resume without --out", C + " --resume"),
        c("capacity resume onto a benchmark file", C + " --resume --out {good_copy}"),
        # ---- check ------------------------------------------------------------------------------------------------
        c("check bandwidth 0", "benchmark.py check {good} --bandwidth 0"),
        c("check bandwidth -1", "benchmark.py check {good} --bandwidth -1"),
        c("check flops 0", "benchmark.py check {good} --flops 0"),
        c("check bandwidth nan", "benchmark.py check {good} --bandwidth nan"),
        c("check duplicate records", "benchmark.py check {dup}"),
        c("check context_tokens 0 (hand-edited)", "benchmark.py check {ctx0}"),
        c("check kv_cache_bytes 0 (hand-edited)", "benchmark.py check {kv0}"),
        c("check ttft_s fast (hand-edited)", "benchmark.py check {fast}"),
        c("check ratio half (hand-edited)", "benchmark.py check {ratio_str}"),
        c("check architecture edited", "benchmark.py check {arch}"),
        c("check missing file", "benchmark.py check {missing}"),
        c("check truncated file", "benchmark.py check {truncated}"),
        c("check not a result file", "benchmark.py check {notresult}"),
        c("check schema 99", "benchmark.py check {schema99}"),
        c("check reference missing", "benchmark.py check {good} --reference {missing}"),
        c("check a folder", "benchmark.py check {tmp}"),
        # ---- compare ----------------------------------------------------------------------------------------------
        c("compare --json into a folder", "benchmark.py compare {good} {good} --json {tmp}"),
        c("compare --json onto an input", "benchmark.py compare {good} {good} --json {good}"),
        c("compare --json into /proc", "benchmark.py compare {good} {good} --json /proc/forbidden/c.json"),
        c("compare a missing file", "benchmark.py compare {good} {missing}"),
        c("compare threshold abc", "benchmark.py compare {good} {good} --threshold abc"),
        c("compare hand-edited ttft_s", "benchmark.py compare {good} {fast}"),
        c("compare duplicate records", "benchmark.py compare {good} {dup}"),
        c("compare against an empty file (gate)", "benchmark.py compare {good} {empty} --fail-on-regression",
          misleading=True),
    ]


def make_files(tmp: Path, say) -> dict[str, str]:
    """The files the cases name: one real tiny result file and hand-edited copies of it, prompts files."""
    good = tmp / "good.json"
    say("making the reference result file (one tiny run) ...")
    proc = subprocess.run([sys.executable, *shlex.split(B), "--methods", "vanilla,knorm@0.5", "--out", str(good)],
                          cwd=ROOT, env=_env({}), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.exit(f"the reference run failed: {proc.stderr.strip()[-500:]}")
    data = json.loads(good.read_text())
    files = {"tmp": str(tmp), "good": str(good), "missing": str(tmp / "missing.json")}

    def variant(name: str, edit) -> None:
        copy_ = copy.deepcopy(data)
        edit(copy_)
        (tmp / f"{name}.json").write_text(json.dumps(copy_))
        files[name] = str(tmp / f"{name}.json")

    variant("good_copy", lambda d: None)
    variant("dup", lambda d: d["results"].append(copy.deepcopy(d["results"][0])))
    variant("fast", lambda d: d["results"][0].update(ttft_s="fast"))
    variant("ctx0", lambda d: d["results"][0].update(context_tokens=0))
    variant("kv0", lambda d: d["results"][0].update(kv_cache_bytes=0))
    variant("ratio_str", lambda d: d["results"][1].update(compression_ratio="half"))
    variant("arch", lambda d: d["run"].update(architecture={"layers": 0}))
    variant("schema99", lambda d: d.update(schema_version=99))
    variant("empty", lambda d: d.update(results=[]))
    (tmp / "truncated.json").write_text(good.read_text()[:300])
    (tmp / "notresult.json").write_text("[1, 2]")
    (tmp / "plain").write_text("not a folder\n")
    files.update(truncated=str(tmp / "truncated.json"), notresult=str(tmp / "notresult.json"),
                 plain=str(tmp / "plain"))
    prompts = {
        "p_thinking": '{"prompt": "hello", "thinking": "false"}\n',
        "p_empty": "# nothing\n",
        "p_badjson": '{"prompt": "hello"\n',
        "p_dupid": '{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n',
        "p_unknown": '{"prompt": "a", "temperature": 0}\n',
        "p_blank": '{"prompt": "  "}\n',
        "p_long": json.dumps({"prompt": "word " * 2000}) + "\n",
    }
    for name, text in prompts.items():
        (tmp / f"{name}.jsonl").write_text(text)
        files[name] = str(tmp / f"{name}.jsonl")
    return files


def _env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KVCOMPRESS_DEBUG"}
    env.update(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def classify(case: Case, code: int | None, stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if code is None:
        return "hang"
    if "Traceback" in stderr or any("unexpected" in line for line in errors):
        return "crash"
    if code == 0:
        return "works" if case.works else "misleading" if case.misleading else "accepted"
    if code == 2 and len(errors) == 1 and lines[-1] == errors[0]:
        return "one-line"
    if code == 1 and errors:
        return "crash"
    return "other"


def run_case(case: Case, files: dict, index: int, timeout: float) -> tuple[str, int | None, float, str]:
    fill = {**files, "new": str(Path(files["tmp"]) / f"out-{index}.json")}
    argv = [a.format(**fill) for a in shlex.split(case.command)]
    env = _env({k: v.format(**fill) for k, v in case.env.items()})
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        code, stderr = None, ""
    seconds = time.perf_counter() - start
    kind = classify(case, code, stderr)
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    return kind, code, seconds, last


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    parser.add_argument("--timeout", type=float, default=180, help="seconds per case before it counts as a hang")
    parser.add_argument("--list", action="store_true", help="print the cases and stop")
    parser.add_argument("--json", type=Path, help="also write each case's outcome here")
    args = parser.parse_args(argv)
    chosen = [c for c in cases() if args.only in c.name]
    if args.list:
        for case in chosen:
            print(f"{case.name:45s} {case.command}")
        print(f"{len(chosen)} cases")
        return 0
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as tmp:
        files = make_files(Path(tmp), print)
        for i, case in enumerate(chosen):
            kind, code, seconds, last = run_case(case, files, i, args.timeout)
            print(f"{kind:10s} exit {code!s:>4s} {seconds:5.1f}s  {case.name}: {last[:160]}", flush=True)
            outcomes.append({"case": case.name, "command": case.command, "class": kind, "exit": code,
                             "seconds": round(seconds, 1), "stderr_last_line": last})
    counts = Counter(o["class"] for o in outcomes)
    print(f"{len(outcomes)} cases: " + ", ".join(f"{k} {counts[k]}" for k in
                                                ("one-line", "crash", "accepted", "misleading", "hang", "works",
                                                 "other") if counts[k]))
    if args.json:
        args.json.write_text(json.dumps({"counts": dict(counts), "cases": outcomes}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
