"""Nothing lost when a run dies half-way through the DMS child process: real signals to real processes.

The tiny preset with --dms-model tiny-dms runs dms-8x-remote in the child process (isolated.py), as on the GPU. Each test
waits until the child has announced its first finished record, then signals the parent: Ctrl-C (SIGINT to the
process group, as a terminal sends it) or kill -9 of the parent alone.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# twelve cells of 3 generations of 200 tokens (~1.3 s each on one thread), so the child is still busy long after the
# first: the signal comes when the test reads the first one's line, and on a loaded machine that read can come late;
# the cells after the signal never run, so more of them cost nothing
CONTEXTS = list(range(256, 1024, 64))
ARGS = ["--preset", "tiny", "--methods", "dms-8x-remote", "--dms-model", "tiny-dms", "--contexts",
        ",".join(map(str, CONTEXTS)), "--max-new-tokens", "200", "--repeats", "1"]


def start(tmp_path, announced: str = "DMS: dms-8x-remote @ 256 tok"):
    """Run the benchmark until a line starting with `announced` appears: by default the child's own line for its
    first finished record (it is on its way to the parent then); the parent prints "[1/12] ..." once it saved it."""
    out = tmp_path / "run.json"
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               TMPDIR=str(tmp_path / "tmp"))
    proc = subprocess.Popen([sys.executable, "benchmark.py", *ARGS, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    for line in proc.stdout:  # until the child says its first record is done
        lines.append(line)
        if line.startswith(announced):
            break
    else:
        raise AssertionError(f"the child never finished a record: {''.join(lines)[-2000:]} {proc.stderr.read()[-2000:]}")
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return proc, int(children[0]), out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has finished; only its exit status is left to collect


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def saved_cells(out: Path) -> list[tuple]:
    return [(r["method"], r["target_tokens"], r["error"]) for r in json.loads(out.read_text())["results"]]


def test_ctrl_c_during_the_dms_child_keeps_its_finished_records(tmp_path):
    proc, child, out = start(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: parent and child both get SIGINT
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "every finished record is already in the output file" in err
    assert ("dms-8x-remote", 256, None) in saved_cells(out)  # what the child announced as done is in the file
    assert wait_gone(child)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_kill_9_of_the_parent_ends_the_child_and_keeps_its_finished_records(tmp_path):
    # kill -9 leaves the parent no chance to drain the pipe: signal it once it said the first record is saved
    proc, child, out = start(tmp_path, announced=f"[1/{len(CONTEXTS)}] dms-8x-remote @ 256 tok")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        assert wait_gone(child), "the DMS child ran on as an orphan"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
    assert ("dms-8x-remote", 256, None) in saved_cells(out)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_sigterm_to_a_quality_run_saves_its_answers_and_where_its_time_went(tmp_path):
    """`timeout`, `kill` and a scheduler's preemption stop a plain run with SIGTERM. The run saves what it answered
    with the header's `quality` block (answers, answers/s, phases: the figures a GPU run cut by its time limit
    reports) and ends with one line naming the unfinished cells; before, the process died at once and the file held
    nothing but its journal."""
    out = tmp_path / "quality.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    args = ["--preset", "tiny", "--tasks", "niah", "--contexts", "1024", "--samples", "8", "--max-new-tokens", "48",
            "--methods", "vanilla,knorm@0.5,streaming_llm@0.875", "--answer-batch", "2", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "test_long_context.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:  # until the first batch's answers are in the file (or its journal)
        lines.append(line)
        if line.startswith("[") and " answers (decoded " in line:
            break
    else:
        raise AssertionError(f"no answer was recorded: {''.join(lines)[-2000:]} {proc.stderr.read()[-2000:]}")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    said = [line for line in err.strip().splitlines() if line.startswith("error:") or "Traceback" in line]
    assert len(said) == 1 and said[0].startswith("error: run stopped by SIGTERM: ") and "--resume" in said[0], err
    assert "torchrun" not in said[0]
    planned = int(re.search(r"= (\d+) cells", "".join(lines)).group(1))
    data = json.loads(out.read_text())
    answered = [r for r in data["results"] if r["error"] is None]
    assert 0 < len(answered) < planned, (len(answered), planned)
    header = data["run"]["quality"]
    assert header["answers"] == len(answered) and header["phases_s"]["shared prefill"] > 0
