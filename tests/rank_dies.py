"""`torchrun ... tests/rank_dies.py benchmark.py ARGS`: runs benchmark.py as a rank; rank 1 SIGKILLs itself (as a lost
GPU or the OOM killer would) the moment it has sent its first record to rank 0, which must then save that record and
name, in one line, the cells the file lacks.

test_ranks.py used to kill rank 1 from outside when its first progress line appeared; on a loaded CI machine the
reader once saw that line only after rank 1 had done all its work, and the run stopped past the point where rank 0
names the missing cells. Killed from inside, the fault lands at the same place on any machine."""

import os
import runpy
import signal
import sys
from pathlib import Path

from kvcompress.ranks import Ranks

if os.environ.get("RANK") == "1":
    send = Ranks.send

    def send_then_die(self, record: dict) -> None:
        send(self, record)
        os.kill(os.getpid(), signal.SIGKILL)

    Ranks.send = send_then_die

script = Path(sys.argv[1]).resolve()
sys.argv = sys.argv[1:]
sys.path.insert(0, str(script.parent))
runpy.run_path(str(script), run_name="__main__")
