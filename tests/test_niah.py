"""Needle prompts and scoring: sizes on the real Qwen3 tokenizer, placement, special-token hygiene, answer scoring,
the heatmap file, and test_long_context.py's input checks and resume on the tiny preset."""

import json
import re

import numpy as np
import pytest
from PIL import Image

import test_long_context
from kvcompress import plots
from kvcompress.errors import UserError
from kvcompress.tasks import niah
from kvcompress.tasks.niah_grid import parse_depths


def _prefix(tokenizer, thinking):
    return niah.render(tokenizer, "", "", thinking)[0]


@pytest.mark.parametrize("target, kind, haystack, thinking", [
    (1024, "fact", "noise", False),
    (8192, "multikey", "paul_graham", False),
    (8192, "multivalue", "noise", True),
    (32768, "single", "paul_graham", False),
])
def test_prompts_hit_their_size_on_the_real_qwen3_tokenizer(qwen3_tokenizer, target, kind, haystack, thinking):
    tok = qwen3_tokenizer
    built = niah.build_prompt(tok, target, 0.5, niah.make_needle(kind, 3), haystack, thinking)
    prompt = built.prompt
    assert abs(prompt.input_tokens - target) <= 0.01 * target, prompt.input_tokens
    context, question = prompt.context_ids[0].tolist(), prompt.question_ids[0].tolist()
    prefix = _prefix(tok, thinking)
    # The template's own special tokens open the context; none follows inside the haystack (no BOS mid-context).
    assert context[: len(prefix)] == prefix
    special = set(tok.all_special_ids) | {tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>")}
    assert not special & set(context[len(prefix):])
    text = tok.decode(context[len(prefix):])
    for sentence in built.needle.sentences:
        assert text.count(sentence) == 1
    tail = tok.decode(question)
    assert tail.startswith("\n\n" + built.needle.question)
    assert tail.endswith("<|im_start|>assistant\n" if thinking else "<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("depth", [0.05, 0.5, 0.95])
def test_needle_sits_at_its_token_depth_on_a_sentence_start(qwen3_tokenizer, depth):
    """Measured independently of the builder: haystack tokens before the needle / haystack tokens."""
    tok = qwen3_tokenizer
    built = niah.build_prompt(tok, 8192, depth, niah.make_needle("single", 1), "paul_graham")
    context = built.prompt.context_ids[0].tolist()
    text = tok.decode(context[len(_prefix(tok, False)):])
    sentence = built.needle.sentences[0]
    at = text.index(sentence)
    before = len(tok.encode(text[:at].rstrip(), add_special_tokens=False))
    haystack = len(tok.encode(text.replace(sentence, ""), add_special_tokens=False))
    measured = before / haystack
    assert measured <= depth + 0.002  # snapped back, never forward
    assert depth - measured < 0.03  # by at most a sentence or two of an essay
    assert abs(measured - built.depth_achieved) < 0.002
    assert at == 0 or re.search(r"[.!?\n]\s*$", text[:at])


def _sized(total_of, target=100, first=90):
    tried = []

    def attempt(budget):  # a stand-in for place + render: the whole prompt's tokens at this haystack budget
        tried.append(budget)
        return total_of(budget), budget

    return niah.size_to_target(target, first, attempt), tried


def test_sizing_corrects_each_budget_by_its_own_total_and_never_repeats_one():
    # Seams make the total step unevenly with the budget: 90 overshoots by one, 89 undershoots by one, 91 is exact.
    # Correcting 89 by the closer 90's error walks down (88, 87, ...); correcting each budget by its own total
    # alone cycles 90, 89, 90, ...: only moving past the tried budgets reaches 91.
    seams = {90: 101, 89: 99, 91: 100}
    (total, budget), tried = _sized(lambda b: seams.get(b, b + 10))
    assert (total, budget) == (100, 91) and tried == [90, 89, 91]


def test_sizing_keeps_the_closest_attempt_when_none_is_exact():
    (total, budget), tried = _sized(lambda b: 2 * (b // 2) + 11)  # odd totals only: 100 is never reached
    assert (total, budget) == (101, 90)  # one off, the first such attempt
    assert len(tried) == len(set(tried)) == 8


def test_depths_order_the_needle_and_multi_needles_spread_out(tiny):
    tok = tiny.tokenizer
    positions = []
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        built = niah.build_prompt(tok, 1500, depth, niah.make_needle("fact", 0))
        positions.append(built.text.index(built.needle.sentences[0]) / len(built.text))
    assert positions == sorted(positions) and positions[0] == 0 and positions[-1] > 0.85
    built = niah.build_prompt(tok, 1500, 0.5, niah.make_needle("multikey", 0, 4))
    at = sorted(built.text.index(s) / len(built.text) for s in built.needle.sentences)
    assert len(at) == 4 and min(b - a for a, b in zip(at, at[1:])) > 0.1


def test_needles_are_seeded_and_distinct():
    a, b = niah.make_needle("multikey", 7, 4), niah.make_needle("multikey", 8, 4)
    assert niah.make_needle("multikey", 7, 4) == a and a.values != b.values
    assert len(set(a.values + a.distractors)) == 4 and len({s.split(" is:")[0] for s in a.sentences}) == 4
    assert len(niah.make_needle("multivalue", 1, 5).values) == 5
    with pytest.raises(UserError, match="between 2 and"):
        niah.make_needle("multikey", 0, 1)
    with pytest.raises(UserError, match="unknown needle kind"):
        niah.make_needle("haiku", 0)


def _needle(kind="single", count=4):
    return niah.make_needle(kind, 5, count)


def test_scoring_is_exact_match_robust_to_verbosity_grouping_and_thinking():
    n = _needle()
    v = n.values[0]
    grouped = f"{v[0]},{v[1:4]},{v[4:]}"
    assert niah.score(f"Sure! The special magic number for {n.key} is {grouped}, as stated.", n) == (True, 1.0)
    assert niah.score(f"<think>\nIt says {v}, I think.\n</think>\n\nI could not find it.", n) == (False, 0.0)
    assert niah.score(f"<think>maybe 1234567?</think>\n\n{v}", n) == (True, 1.0)
    assert niah.score(f"The text gives {v} and more.</think> None.", n)[0] is False  # template-opened block
    unfinished = f"<think>\nThe number is {v}, let me double-check"
    assert niah.score(unfinished, n)[0] is False and niah.thinking_unfinished(unfinished)
    assert niah.score(f"It is 1{v}.", n)[0] is False  # a longer number is not the value
    assert niah.score(v[:-1], n)[0] is False


def test_multikey_hedging_and_multivalue_partial_recall_are_wrong():
    mk = _needle("multikey")
    right, wrong = mk.values[0], mk.distractors[0]
    assert niah.score(f"It is {right}.", mk)[0] is True
    assert niah.score(f"It is {wrong}.", mk)[0] is False
    assert niah.score(f"Either {right} or {wrong}.", mk) == (False, 1.0)
    mv = _needle("multivalue")
    assert niah.score(", ".join(mv.values[::-1]), mv) == (True, 1.0)
    assert niah.score(", ".join(mv.values[:3]), mv) == (False, 0.75)


def test_depths_parse_as_fractions_or_percentages():
    assert parse_depths("5%,50%, 95%") == [0.05, 0.5, 0.95] == parse_depths("0.95,0.05,0.5,0.5")
    for bad in ("1.5", "abc", "", "-0.1"):
        with pytest.raises(UserError):
            parse_depths(bad)


def test_heatmap_colours_and_metadata_follow_the_counts(tmp_path):
    cells = {(1024, 0.05): (3, 3), (1024, 0.5): (0, 3), (2048, 0.05): (1, 2), (2048, 0.5): (0, 0)}
    path = tmp_path / "h.png"
    boxes = plots.retrieval_heatmap(cells, path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(path)
    assert json.loads(image.info["Description"]) == [
        {"context_tokens": c, "depth": d, "found": f, "trials": t} for (c, d), (f, t) in sorted(cells.items())]
    rgb = {key: _cell_colour(np.asarray(image.convert("RGB")), box) for key, box in boxes.items()}
    r, g, b = rgb[(1024, 0.05)]
    assert g > r + 60  # all found: green
    r, g, b = rgb[(1024, 0.5)]
    assert r > g + 60  # none found: red
    r, g, b = rgb[(2048, 0.05)]
    assert r > 200 and g > 200 and r - b > 30  # half found: yellow, between the two
    assert max(rgb[(2048, 0.5)]) - min(rgb[(2048, 0.5)]) < 10  # no measured trial: grey


def test_task_heatmap_rows_follow_the_tasks_given_and_its_metadata_names_them(tmp_path):
    """One figure a method for the tasks without a depth grid: a row per task in the order asked, coloured by
    score (not by found/trials), each cell in the PNG's JSON under its task."""
    cells = {(1024, "vt"): (2, 2), (1024, "cwe"): (0, 2), (2048, "vt"): (1, 2), (2048, "cwe"): (2, 2)}
    scores = {(1024, "vt"): 1.0, (1024, "cwe"): 0.0, (2048, "vt"): 0.5, (2048, "cwe"): 0.1}
    path = tmp_path / "t.png"
    boxes = plots.task_heatmap(cells, ["vt", "cwe"], path, "test", scores)
    image = Image.open(path)
    assert json.loads(image.info["Description"]) == [
        {"context_tokens": 1024, "task": "vt", "found": 2, "trials": 2, "score": 1.0},
        {"context_tokens": 1024, "task": "cwe", "found": 0, "trials": 2, "score": 0.0},
        {"context_tokens": 2048, "task": "vt", "found": 1, "trials": 2, "score": 0.5},
        {"context_tokens": 2048, "task": "cwe", "found": 2, "trials": 2, "score": 0.1}]
    assert boxes[(1024, "vt")][1] < boxes[(1024, "cwe")][1]  # vt, asked first, is the top row
    rgb = {key: _cell_colour(np.asarray(image.convert("RGB")), box) for key, box in boxes.items()}
    assert rgb[(1024, "vt")][1] > rgb[(1024, "vt")][0] + 60  # score 1: green
    r, g, b = rgb[(2048, "cwe")]
    assert r > g + 60  # score 0.1 though all 2 were found: the colour is the score's


def _cell_colour(pixels, box):
    """Median colour of a patch near the cell's top-left corner (away from the centred count)."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    patch = pixels[top + h // 10: top + h // 4, left + w // 10: left + w // 4].reshape(-1, 3)
    return tuple(int(x) for x in np.median(patch, axis=0))


@pytest.mark.parametrize("argv, message", [
    (["--depths", "1.5"], "outside the context"),
    (["--thinking", "--max-new-tokens", "64"], "--thinking needs --max-new-tokens >= 1024"),
    (["--sample", "--greedy"], "contradict"),
    (["--needle", "multikey", "--needles", "1"], "between 2 and"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--contexts", "100"], "cannot hold the chat template"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    argv = ["--preset", "tiny", "--methods", "vanilla", "--out", str(tmp_path / "o.json")] + argv
    assert test_long_context.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_tiny_preset_runs_and_resume_skips_every_done_cell(tmp_path, capsys):
    out = tmp_path / "lc.json"
    argv = ["--preset", "tiny", "--methods", "vanilla,knorm@0.5", "--contexts", "512", "--depths", "0.5",
            "--trials", "2", "--max-new-tokens", "4", "--tasks", "niah", "--out", str(out),
            "--mode", "measured"]  # the timed path (quality mode's resume: tests/test_quality_run.py)
    assert test_long_context.main(argv) == 0
    data = json.loads(out.read_text())
    records = data["results"]
    assert len(records) == 4 and data["run"]["niah"]["trials"] == 2
    for r in records:
        assert r["error"] is None and r["task"] == "long_context" and r["fixed_output_length"] is False
        assert r["depth"] == 0.5 and r["needle"].startswith("single:") and r["correct"] is not None
        assert abs(r["input_tokens"] - 512) <= 5 and r["ttft_s"] > 0 and r["kv_cache_bytes"] > 0
    assert len({r["needle"] for r in records}) == 2  # one needle per trial
    for method in ("vanilla", "knorm@0.5"):
        assert (tmp_path / f"lc-heatmap-{method}.png").exists()
    capsys.readouterr()
    assert test_long_context.main(argv + ["--resume"]) == 0
    assert capsys.readouterr().out.count("already in") == 4
    assert json.loads(out.read_text())["results"] == records


def test_progress_lines_name_the_task_and_where_the_needle_really_is():
    """test_long_context's lines did not say which task a cell belongs to (its tasks share lengths and depths), and
    the tiny preset's 256-token line said 'depth 0.5' for a needle the sentence snap put at 0."""
    from kvcompress.results import BenchmarkResult
    from kvcompress.run.one_cell import progress_line

    common = dict(model="tiny", weights="random", method="knorm@0.5", target_tokens=1024, input_tokens=1024,
                  ttft_s=0.1, decode_tokens_per_s=10.0, kv_cache_bytes=2**20, kv_live_bytes=2**20,
                  kv_tokens_kept=10.0, depth=0.5)
    line = progress_line(BenchmarkResult(task="long_context", task_family="vt", depth_achieved=0.49, **common))
    assert line.startswith("vt: knorm@0.5 @ 1024 tok, depth 0.5:"), line
    line = progress_line(BenchmarkResult(task="benchmark", task_family="niah", depth_achieved=0.0, **common))
    assert line.startswith("knorm@0.5 @ 1024 tok, depth 0.5 (reached 0: "), line


def test_a_task_without_depths_gets_one_task_figure_a_method_not_one_per_task(tmp_path):
    """RULER's tasks have no depth grid: their cells go to <out>-tasks-<method>.png (a row each), the needle keeps its
    depth x length heatmap, and no one-row heatmap is written per RULER task."""
    out = tmp_path / "lc.json"
    argv = ["--preset", "tiny", "--methods", "vanilla", "--contexts", "1024", "--depths", "0.5", "--trials", "1",
            "--max-new-tokens", "4", "--tasks", "niah,niah_single_1,niah_single_2", "--out", str(out)]
    assert test_long_context.main(argv) == 0
    records = json.loads(out.read_text())["results"]
    assert (tmp_path / "lc-heatmap-vanilla.png").exists()
    assert not list(tmp_path.glob("lc-heatmap-niah_single*"))
    cells = json.loads(Image.open(tmp_path / "lc-tasks-vanilla.png").info["Description"])
    want = [{"context_tokens": 1024, "task": t, "found": sum(bool(r["correct"]) for r in mine), "trials": len(mine),
             "score": sum(r["score"] for r in mine) / len(mine)}
            for t in ("niah_single_1", "niah_single_2") for mine in [[r for r in records if r["task_family"] == t]]]
    assert cells == want
