"""The commands: one module each, with its argument parser (`build_parser()`) and its run function (`run(args)`),
dispatched from one table. The four scripts at the repository root each run one command; benchmark.py also takes
compare, check, capacity and fidelity in first position.

Every command module imports without torch, transformers or kvpress, so --help and a bad option answer at once:
those are imported inside a command's `run`, once its arguments are good (the one place the package imports
inside functions on purpose).
"""

from __future__ import annotations

import sys

from kvcompress import cli
from kvcompress.commands import (benchmark, capacity, checks, compare, dms_side_by_side, fidelity, long_context,
                                 press_sweep)

COMMANDS = {
    "benchmark": benchmark,  # benchmark.py
    "press-sweep": press_sweep,  # test_kvpress_api.py
    "dms-side-by-side": dms_side_by_side,  # test_dms_inference.py
    "long-context": long_context,  # test_long_context.py
    "capacity": capacity,  # benchmark.py capacity
    "compare": compare,  # benchmark.py compare
    "check": checks,  # benchmark.py check
    "fidelity": fidelity,  # benchmark.py fidelity
}
# benchmark.py's subcommands: only in first position, so every benchmark option keeps its meaning
SUBCOMMANDS = ("compare", "check", "capacity", "fidelity")


def run_command(name: str, argv: list[str]) -> int:
    command = COMMANDS[name]
    return command.run(command.build_parser().parse_args(argv))


def script_main(name: str):
    """A script's `main(argv=None)`: command `name` (for benchmark.py, a subcommand named first), with user errors
    as one line and exit 2, Ctrl-C as exit 130 (cli.main)."""

    @cli.main
    def main(argv=None) -> int:
        argv = sys.argv[1:] if argv is None else list(argv)
        if name == "benchmark" and argv[:1] and argv[0] in SUBCOMMANDS:
            return run_command(argv[0], argv[1:])
        return run_command(name, argv)

    return main
