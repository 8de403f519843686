"""benchmark.py compare: pairs of result files built from one real tiny run, judged change by change.

B files are A with one thing moved (a timing, the KV bytes, a header field, a record), so each test knows what the
comparison must find, and the real run supplies every other field with what the engine actually recorded.
"""

import copy
import json
import sys
from pathlib import Path

import pytest

import benchmark
from kvcompress.results import CONTRACT_FIELDS


@pytest.fixture(scope="module")
def cpu_baseline(tmp_path_factory) -> Path:
    """A real result file: the tiny preset, vanilla and knorm@0.5, three timed repeats (so timings have an IQR)."""
    out = tmp_path_factory.mktemp("compare") / "a.json"
    argv = ["--preset", "tiny", "--methods", "vanilla,knorm@0.5", "--contexts", "256", "--max-new-tokens", "4",
            "--repeats", "3", "--out", str(out)]
    assert benchmark.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def baseline(cpu_baseline, tmp_path_factory) -> Path:
    """The real run labelled as a GPU run (CUDA events, allocator peaks): CPU timings are never judged, and these
    tests are about the judging."""
    data = json.loads(cpu_baseline.read_text())
    for r in data["results"]:
        r["timing"], r["memory_source"] = "cuda_events", "cuda_max_memory_allocated"
    out = tmp_path_factory.mktemp("compare") / "a.json"
    out.write_text(json.dumps(data))
    return out


def test_cpu_timings_are_shown_but_never_called_regressions(cpu_baseline, tmp_path, capsys):
    def ten_times_slower_and_more_kv(data):
        for r in data["results"]:
            r["ttft_s"] *= 10
            r["ttft_samples_s"] = [t * 10 for t in r["ttft_samples_s"]]
            r["peak_mem_decode_bytes"] *= 2
        record(data, "knorm@0.5")["kv_cache_bytes"] += 1024

    b = variant(cpu_baseline, tmp_path, ten_times_slower_and_more_kv)
    code, report, printed = compare(capsys, tmp_path, cpu_baseline, b, "--fail-on-regression")
    assert code == 1  # the KV bytes still count
    assert [(c["cell"]["method"], r["metric"]) for c in report["cells"] for r in c["rows"]
            if r["verdict"] == "regression"] == [("knorm@0.5", "kv_cache_bytes")]
    assert rows(report, "vanilla")["ttft_s"]["verdict"] == "cpu: not judged"
    assert rows(report, "vanilla")["peak_mem_decode_bytes"]["verdict"] == "cpu: not judged"
    assert printed.count("pipeline checks, not performance") == 1


def variant(baseline: Path, tmp_path: Path, edit, name: str = "b.json") -> Path:
    data = json.loads(baseline.read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def record(data: dict, method: str) -> dict:
    return next(r for r in data["results"] if r["method"] == method)


def compare(capsys, tmp_path, a: Path, b: Path, *flags) -> tuple[int, dict, str]:
    """Run the real subcommand; return the exit code, the --json report and what was printed."""
    out = tmp_path / "comparison.json"
    code = benchmark.main(["compare", str(a), str(b), "--json", str(out), *flags])
    printed = capsys.readouterr().out
    return code, json.loads(out.read_text()), printed


def rows(report: dict, method: str) -> dict[str, dict]:
    cell = next(c for c in report["cells"] if c["cell"]["method"] == method)
    return {r["metric"]: r for r in cell["rows"]}


def test_the_same_run_twice_is_no_change(baseline, tmp_path, capsys):
    again = variant(baseline, tmp_path, lambda d: d["run"].update(time_utc="later"))
    code, report, printed = compare(capsys, tmp_path, baseline, again, "--fail-on-regression")
    assert code == 0
    assert len(report["cells"]) == 2 and report["only_in_a"] == report["only_in_b"] == []
    assert report["header_differences"] == [] and "warning" not in printed
    verdicts = {row["verdict"] for cell in report["cells"] for row in cell["rows"]}
    assert verdicts == {"unchanged"} and len(rows(report, "knorm@0.5")) == 7
    assert "no change beyond noise" in printed and not report["regressed"]


def test_a_change_within_the_runs_spread_is_noise(baseline, tmp_path, capsys):
    iqr = record(json.loads(baseline.read_text()), "vanilla")["ttft_iqr_s"]
    assert iqr > 0, "wall-clock repeats never time identically"
    shift = iqr / 2  # inside IQR_A + IQR_B = 2 x iqr (shifting every repeat keeps B's IQR equal to A's)

    def slower(data):
        r = record(data, "vanilla")
        r["ttft_samples_s"] = [t + shift for t in r["ttft_samples_s"]]
        r["ttft_s"] += shift

    code, report, _ = compare(capsys, tmp_path, baseline, variant(baseline, tmp_path, slower), "--threshold", "0",
                              "--fail-on-regression")
    ttft = rows(report, "vanilla")["ttft_s"]
    assert ttft["verdict"] == "noise" and ttft["change_pct"] > 0
    assert ttft["spread"] == pytest.approx(2 * iqr) and code == 0


def test_moves_beyond_the_spread_are_flagged_in_their_direction(baseline, tmp_path, capsys):
    a = record(json.loads(baseline.read_text()), "vanilla")
    # Moves that clear both the spread and --threshold 50 whatever the repeats measured on a busy CPU:
    slower = 2 * a["ttft_iqr_s"] + a["ttft_s"]  # every TTFT repeat later by more than IQR_A + IQR_B and 50 %
    fast_tpot = min(a["tpot_samples_ms"]) / 3  # every repeat 3x faster than A's fastest: beyond any IQR of A

    def moved(data):
        vanilla, knorm = record(data, "vanilla"), record(data, "knorm@0.5")
        vanilla["ttft_samples_s"] = [t + slower for t in vanilla["ttft_samples_s"]]
        vanilla["ttft_s"] += slower
        vanilla["tpot_samples_ms"] = [fast_tpot] * len(vanilla["tpot_samples_ms"])
        vanilla["tpot_ms"], vanilla["decode_tokens_per_s"] = fast_tpot, 1000 / fast_tpot
        # knorm stops evicting: its cache holds what vanilla's holds (the press silently became a no-op)
        knorm["kv_cache_bytes"], knorm["kv_tokens_kept"] = vanilla["kv_cache_bytes"], vanilla["kv_tokens_kept"]
        knorm["kv_cache_bytes_end"] += 2  # two bytes: still real, whatever --threshold says

    b = variant(baseline, tmp_path, moved)
    code, report, printed = compare(capsys, tmp_path, baseline, b, "--threshold", "50", "--fail-on-regression")
    vanilla, knorm = rows(report, "vanilla"), rows(report, "knorm@0.5")
    assert vanilla["ttft_s"]["verdict"] == "regression"
    assert vanilla["ttft_s"]["change_pct"] == pytest.approx(100 * slower / a["ttft_s"])
    assert vanilla["decode_tokens_per_s"]["verdict"] == "improvement" and vanilla["decode_tokens_per_s"]["b"] > \
        2.5 * vanilla["decode_tokens_per_s"]["a"]
    assert knorm["kv_cache_bytes"]["verdict"] == "regression" and knorm["kv_cache_bytes"]["change_pct"] > 90
    assert knorm["kv_cache_bytes_end"]["verdict"] == "regression" and knorm["kv_cache_bytes_end"]["band"] is None
    assert knorm["kv_tokens_kept"]["verdict"] == "changed"  # reported, not judged
    assert knorm["ttft_s"]["verdict"] == "unchanged"
    assert code == 1 and report["regressed"]
    assert "regression vanilla @ 256 tok: TTFT" in printed and "regression knorm@0.5 @ 256 tok: KV after" in printed
    assert benchmark.main(["compare", str(baseline), str(b)]) == 0  # without the flag, regressions are reported only


def test_header_differences_are_warned_before_the_tables(baseline, tmp_path, capsys):
    def other_machine(data):
        data["run"].update(gpu="NVIDIA H200", torch="2.10.0", kvpress="0.5.6")
        data["run"]["arguments"]["haystack"] = "paul_graham"

    code, report, printed = compare(capsys, tmp_path, baseline, variant(baseline, tmp_path, other_machine))
    assert {d["field"] for d in report["header_differences"]} == {"gpu", "torch", "kvpress", "arguments.haystack"}
    assert printed.index("warning: kvpress differs: '0.5.5' (A) vs '0.5.6' (B)") < printed.index("vanilla @ 256 tok")
    assert code == 0 and len(report["cells"]) == 2


def test_added_missing_and_failing_records(baseline, tmp_path, capsys):
    def changed_grid(data):
        knorm = record(data, "knorm@0.5")
        data["results"].remove(knorm)
        data["results"].append(dict(copy.deepcopy(knorm), method="snapkv@0.5"))
        record(data, "vanilla").update(error="CUDA OOM: tried to allocate 2 GiB")

    code, report, printed = compare(capsys, tmp_path, baseline, variant(baseline, tmp_path, changed_grid),
                                    "--fail-on-regression")
    assert [r["method"] for r in report["only_in_a"]] == ["knorm@0.5"]
    assert [r["method"] for r in report["only_in_b"]] == ["snapkv@0.5"]
    status = rows(report, "vanilla")["status"]
    assert status["verdict"] == "regression" and "CUDA OOM" in status["detail"]
    assert "only in A (missing from B)" in printed and "only in B (added)" in printed and code == 1


def test_runs_that_share_no_identity_say_why(baseline, tmp_path, capsys):
    def pretrained(data):
        data["run"]["weights"] = "pretrained"
        for r in data["results"]:
            r["weights"] = "pretrained"

    code, report, printed = compare(capsys, tmp_path, baseline, variant(baseline, tmp_path, pretrained))
    assert report["cells"] == [] and len(report["only_in_a"]) == len(report["only_in_b"]) == 2
    assert report["unmatched_because"] == ["weights: random vs pretrained"]
    assert "warning: weights differs" in printed and code == 0


def test_records_match_only_at_the_same_batch(baseline, tmp_path, capsys):
    def batched(data):
        for r in data["results"]:
            r["batch"] = 8

    code, report, printed = compare(capsys, tmp_path, baseline, variant(baseline, tmp_path, batched))
    assert report["cells"] == [] and report["unmatched_because"] == ["batch: 1 vs 8"]

    def older(data):  # a file written before batches existed: its records are batch 1
        for r in data["results"]:
            del r["batch"]

    code, report, printed = compare(capsys, tmp_path, baseline, variant(baseline, tmp_path, older, "old.json"))
    assert len(report["cells"]) == 2


def test_across_engines_pairs_the_same_cells_run_with_hf_and_fast(baseline, tmp_path, capsys):
    def fast_engine(data):
        data["run"]["engine"] = "fast"
        for r in data["results"]:
            r["engine"] = "fast"
        record(data, "knorm@0.5")["peak_mem_decode_bytes"] *= 2  # beyond any --threshold: a real regression

    b = variant(baseline, tmp_path, fast_engine)
    code, report, _ = compare(capsys, tmp_path, baseline, b)
    assert report["cells"] == [] and report["unmatched_because"] == ["engine: hf vs fast"]
    code, report, printed = compare(capsys, tmp_path, baseline, b, "--across-engines", "--fail-on-regression")
    assert len(report["cells"]) == 2 and report["only_in_a"] == report["only_in_b"] == []
    assert rows(report, "knorm@0.5")["peak_mem_decode_bytes"]["verdict"] == "regression"
    assert rows(report, "vanilla")["peak_mem_decode_bytes"]["verdict"] == "unchanged"
    assert "warning: engine differs: 'hf' (A) vs 'fast' (B)" in printed and code == 1


def needle_grid(found: list[bool]):
    """The vanilla record at three depths with real weights, found or not as given."""
    def edit(data):
        vanilla = record(data, "vanilla")
        data["run"]["weights"] = "pretrained"
        data["results"] = [dict(copy.deepcopy(vanilla), depth=depth, weights="pretrained", correct=hit,
                                score=float(hit)) for depth, hit in zip((0.25, 0.5, 0.75), found)]
    return edit


@pytest.mark.parametrize("found_b, shown, verdict", [
    ([True, False, False], ("2/3", "1/3", "-1 (1 lost, 0 gained)"), "regression"),
    ([True, False, True], ("2/3", "2/3", "+0 (1 lost, 1 gained)"), "noise"),
    ([True, True, True], ("2/3", "3/3", "+1 (0 lost, 1 gained)"), "improvement"),
])
def test_needle_counts_are_compared_prompt_for_prompt(baseline, tmp_path, capsys, found_b, shown, verdict):
    a = variant(baseline, tmp_path, needle_grid([True, True, False]), "a.json")
    b = variant(baseline, tmp_path, needle_grid(found_b))
    _, report, printed = compare(capsys, tmp_path, a, b)
    (cell,) = report["cells"]
    assert cell["records"] == 3
    needle = {r["metric"]: r for r in cell["rows"]}["needle_found"]
    assert (needle["a"], needle["b"], needle["detail"]) == shown and needle["verdict"] == verdict
    assert "depth 0.75" in printed  # several records in one cell: each row says which prompt it is


def test_records_without_newer_fields_load_with_defaults(baseline, tmp_path, capsys):
    """Only the contract fields (the oldest records of schema 1): spread falls back to the recorded IQRs."""
    def contract_only(data):
        data["results"] = [{k: v for k, v in r.items() if k in CONTRACT_FIELDS} for r in data["results"]]

    def contract_only_slower(data):
        contract_only(data)
        vanilla = record(data, "vanilla")
        vanilla["ttft_s"] += 3 * vanilla["ttft_iqr_s"]

    a = variant(baseline, tmp_path, contract_only, "a.json")
    code, report, _ = compare(capsys, tmp_path, a, variant(baseline, tmp_path, contract_only_slower),
                              "--threshold", "0")
    ttft = rows(report, "vanilla")["ttft_s"]
    iqr = record(json.loads(a.read_text()), "vanilla")["ttft_iqr_s"]
    assert ttft["spread"] == pytest.approx(2 * iqr) and ttft["verdict"] == "regression"
    assert rows(report, "vanilla")["kv_cache_bytes"]["verdict"] == "unchanged" and code == 0


def _set_ttft_text(data):
    record(data, "vanilla")["ttft_s"] = "fast"


def _duplicate(data):
    data["results"].append(copy.deepcopy(data["results"][0]))


@pytest.mark.parametrize("content, message", [
    (lambda text: text[: len(text) // 2], "not valid JSON (truncated or corrupt?)"),
    (lambda text: "[1, 2]", "not a kvcompress result file"),
    (lambda text: text.replace('"schema_version": 2', '"schema_version": 0'), "schema_version 0 is not supported "
                                                                               "(an older format with no migration"),
    (lambda text: text.replace('"schema_version": 2', '"schema_version": 3'), "schema_version 3 is not supported "
                                                                               "(written by a newer kvcompress"),
    (lambda text: text.replace('"schema_version": 2,', ''), "schema_version None is not a version number"),
    (lambda text: json.dumps({"schema_version": 1, "run": {}, "results": [{"weights": "random"}]}),
     "record 0 is malformed"),
    (lambda text: json.dumps({"schema_version": 1, "run": {}, "results": ["x"]}), "record 0 is not an object"),
    ("ttft", "ttft_s is 'fast', not a number"),  # refused by results.load
    ("duplicate", "two records share one identity (vanilla @ 256 tok, depth 0.5, "),
])
def test_bad_files_are_one_line_and_exit_2(baseline, tmp_path, capsys, content, message):
    if content == "ttft":
        bad = variant(baseline, tmp_path, _set_ttft_text, "bad.json")
    elif content == "duplicate":
        bad = variant(baseline, tmp_path, _duplicate, "bad.json")
    else:
        bad = tmp_path / "bad.json"
        bad.write_text(content(json.dumps(json.loads(baseline.read_text()), indent=1)))
    assert benchmark.main(["compare", str(baseline), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}") and message in err and "\n" not in err


@pytest.mark.parametrize("flags, message", [
    (["--threshold", "-1"], "--threshold must be a percentage >= 0"),
    (["--json", "A"], "would overwrite an input file"),
])
def test_bad_options_are_one_line_and_exit_2(baseline, capsys, flags, message):
    flags = [str(baseline) if f == "A" else f for f in flags]
    assert benchmark.main(["compare", str(baseline), str(baseline), *flags]) == 2
    assert message in capsys.readouterr().err


def test_the_command_line_refuses_a_truncated_file_without_a_traceback(baseline, tmp_path, monkeypatch, capsys):
    """As a user types it (arguments from sys.argv), with the CI flag: exit 2, one line, no traceback."""
    truncated = tmp_path / "truncated.json"
    truncated.write_text(baseline.read_text()[:200])
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "compare", str(baseline), str(truncated), "--fail-on-regression"])
    assert benchmark.main() == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {truncated}: not valid JSON") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("edit", ["empty", "another_script"])
def test_a_gate_that_compared_nothing_fails(cpu_baseline, tmp_path, capsys, edit):
    """--fail-on-regression exited 0 when B was empty or from another script: a CI gate passed on nothing."""
    def change(data):
        if edit == "empty":
            data["results"] = []
        for r in data["results"]:
            r["task"] = "kvpress_api"

    b = variant(cpu_baseline, tmp_path, change)
    code, report, printed = compare(capsys, tmp_path, cpu_baseline, b, "--fail-on-regression")
    assert code == 1 and report["cells"] == []
    assert "no cell of" in printed and "nothing was compared" in printed
    code, _, _ = compare(capsys, tmp_path, cpu_baseline, b)  # without the gate: a report, exit 0
    assert code == 0
