"""The ranks of a run started with torchrun: one process per GPU, cells taken from a queue in torchrun's own store.

A plain run (no torchrun, or one rank) is `Ranks()`: one rank, no store; every method below is then trivial and the
run is exactly the single-process run. Under torchrun (`WORLD_SIZE` > 1) every rank connects to the c10d store that
torchrun's agent already runs (`env://` rendezvous: no queue of our own, no sockets of our own) and:

- **the queue**: every rank builds the same ordered list of work (cell x batch x method, longest first) and claims an
  item with one atomic `store.add` on its key: the rank whose add returns 1 does it, every other rank skips it. Each
  item goes to exactly one rank, whatever the contention, with no coordinator.
- **one writer**: rank 0 alone writes the result file (locked, atomic, resumable). Another rank sends each record
  through the store (`record/<n>`); rank 0 adds what arrived between its own cells and until every rank finished.
- **resume**: rank 0 opens the file and publishes the identities already finished; every rank skips them, so a run
  resumes with any number of ranks.
- **a lost rank**: torchrun stops the other ranks with SIGTERM. Rank 0 then saves what arrived and ends with one line
  naming the cells that are not in the file; `--resume` completes them (records in flight from the lost rank are done
  again, never duplicated: the file holds each identity once).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from kvcompress.errors import UserError

POLL_S = 0.2  # how often rank 0 looks for records while it waits for the other ranks


class RunStopped(BaseException):
    """SIGTERM reached the process that writes the file (stop_on_sigterm). A BaseException, like KeyboardInterrupt:
    the `except Exception` that turns a failing method into an error record must not swallow it."""


class OtherRankDone(Exception):
    """A rank other than 0 finished its share: rank 0 writes the file and prints the tables, this rank just exits."""


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    host: str = field(default_factory=socket.gethostname)
    store: object | None = None  # torch.distributed.Store (a PrefixStore over torchrun's agent store)
    _received: int = 0
    _done: int = 0
    _local: dict = field(default_factory=dict)  # mark / count of a plain run

    @classmethod
    def from_env(cls) -> "Ranks":
        """The ranks torchrun's environment describes; a plain one-rank run without it."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world < 2:
            return cls()
        import torch.distributed as dist

        rank = int(os.environ["RANK"])
        # The agent store outlives every worker (it lives in torchrun's agent) and is fresh per torchrun; a restart
        # round gets its own key space.
        store = next(iter(dist.rendezvous("env://", rank, world)))[0]
        store = dist.PrefixStore(f"kvcompress/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
        return cls(rank, world, int(os.environ.get("LOCAL_RANK", "0")), socket.gethostname(), store)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        return self.rank == 0

    # ---- start: who is here, what is already done ----
    def announce(self, about: dict) -> list[dict] | None:
        """Every rank says who it is; rank 0 gets the roster (for the run header), the others None."""
        if not self.distributed:
            return None
        self.store.set(f"rank/{self.rank}", json.dumps({"rank": self.rank, "local_rank": self.local_rank,
                                                        "host": self.host, **about}))
        if not self.writer:
            return None
        return [json.loads(self.store.get(f"rank/{r}")) for r in range(self.world)]

    def share_start(self, done: set[tuple] | None = None, error: str | None = None) -> set[tuple]:
        """Rank 0 publishes the finished identities of a resumed file (or the one-line error that stops the run
        before it starts); every rank returns that set, or raises the error."""
        if not self.distributed:
            return done or set()
        if self.writer:
            self.store.set("start", json.dumps({"done": [list(i) for i in (done or ())], "error": error}))
        start = json.loads(self.store.get("start"))
        if start["error"] is not None:
            raise UserError(start["error"])
        return {tuple(i) for i in start["done"]}

    # ---- the queue ----
    def claim(self, key: str) -> bool:
        """True for exactly one rank per key (the first to ask)."""
        return not self.distributed or self.store.add(f"claim/{key}", 1) == 1

    def tick(self) -> int:
        """The run's done count after this rank finished one more item (counted over every rank)."""
        if not self.distributed:
            self._done += 1
            return self._done
        return self.store.add("progress", 1)

    def add(self, key: str, n: int) -> int:
        """A counter over every rank (this process's own in a plain run): add n, return the new total."""
        if self.distributed:
            return self.store.add(f"sum/{key}", n)
        self._local[f"sum/{key}"] = self._local.get(f"sum/{key}", 0) + n
        return self._local[f"sum/{key}"]

    def mark(self, key: str) -> None:
        """A fact every rank can ask about later (`marked`)."""
        if self.distributed:
            self.store.set(f"mark/{key}", "1")
        else:
            self._local[f"mark/{key}"] = 1

    def marked(self, key: str) -> bool:
        return self.store.check([f"mark/{key}"]) if self.distributed else f"mark/{key}" in self._local

    def count(self, key: str) -> None:
        if self.distributed:
            self.store.add(f"count/{key}", 1)

    def wait_count(self, key: str, n: int) -> None:
        """Until `count(key)` was called n times over all ranks (a plain run has done its own already)."""
        while self.distributed and self.store.add(f"count/{key}", 0) < n:
            time.sleep(POLL_S)

    # ---- records to rank 0 ----
    def send(self, record: dict) -> None:
        n = self.store.add("records", 1)
        self.store.set(f"record/{n}", json.dumps(record))

    def receive(self) -> list[dict]:
        """Rank 0: the records sent since the last call, in sending order (each key removed once read)."""
        if not self.distributed:
            return []
        sent = self.store.add("records", 0)
        got = []
        for n in range(self._received + 1, sent + 1):
            got.append(json.loads(self.store.get(f"record/{n}")))  # waits for a set that follows its add
            self.store.delete_key(f"record/{n}")
        self._received = sent
        return got

    def share(self, key: str, value) -> None:
        """A value of this rank that rank 0 gathers at the end (`gather`)."""
        if self.distributed:
            self.store.set(f"share/{key}/{self.rank}", json.dumps(value))

    def gather(self, key: str) -> list:
        """Rank 0, after `wait_for_others`: every rank's shared value for key (ranks that shared none left out)."""
        if not self.distributed:
            return []
        keys = [f"share/{key}/{r}" for r in range(self.world)]
        return [json.loads(self.store.get(k)) for k in keys if self.store.check([k])]

    # ---- the end ----
    def finish(self) -> None:
        if self.distributed and not self.writer:
            self.store.add("finished", 1)

    def wait_for_others(self, on_record) -> None:
        """Rank 0: hand every arriving record to on_record until all other ranks finished, then the last ones."""
        if not self.distributed:
            return
        while self.store.add("finished", 0) < self.world - 1:
            for record in self.receive():
                on_record(record)
            time.sleep(POLL_S)
        for record in self.receive():
            on_record(record)


def stop_on_sigterm(ranks: Ranks):
    """The process that writes the file (a plain run, or rank 0 under torchrun, which stops the ranks with SIGTERM
    after one failed): SIGTERM becomes RunStopped, so the file is saved, a quality run's header block with it, and the
    unfinished cells are named (`timeout`, `kill`, a scheduler's preemption all send SIGTERM). Other ranks keep the
    default: what they finished was sent to rank 0 as it was done.
    Python runs a signal handler wherever the main thread is; inside a finalizer (__del__, a weakref callback) its
    exception cannot propagate and goes to sys.unraisablehook instead, printed as a traceback, and the run goes on.
    There the signal (SIGTERM, or Ctrl-C's SIGINT) is sent again, 10 ms later from another thread (sent at once, it
    would be handled inside the hook): by then the finalizer has returned, or the hook sends it again."""
    if ranks.writer and threading.current_thread() is threading.main_thread():
        def stop(signum, frame):
            raise RunStopped()
        signal.signal(signal.SIGTERM, stop)
        if not getattr(sys.unraisablehook, "redelivers_stops", False):
            sys.unraisablehook = _redeliver_stops(sys.unraisablehook)


def _redeliver_stops(previous):
    def hook(unraisable):
        signum = {RunStopped: signal.SIGTERM, KeyboardInterrupt: signal.SIGINT}.get(type(unraisable.exc_value))
        if signum is None:
            previous(unraisable)
            return
        timer = threading.Timer(0.01, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
    hook.redelivers_stops = True
    return hook


def local_device(device):
    """Under torchrun, `--device cuda` means this rank's GPU (cuda:LOCAL_RANK), made the current device so that every
    unindexed CUDA call (memory statistics, events) reads it; an indexed device would put ranks on one GPU."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2 or device.type != "cuda":
        return device
    if device.index is not None:
        raise UserError(f"--device {device}: under torchrun each rank takes its own GPU (cuda:LOCAL_RANK); "
                        "write --device cuda")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise UserError(f"rank {local} of this node has no GPU: {torch.cuda.device_count()} visible; start torchrun "
                        "with --nproc-per-node at most the number of GPUs")
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def unfinished(planned: list[str], finished: list[str]) -> list[str]:
    """The planned cell labels that no finished record carries, as 'label xN' where a label repeats."""
    from collections import Counter

    left = Counter(planned) - Counter(finished)
    return [label if n == 1 else f"{label} x{n}" for label, n in left.items()]
