"""What the pipeline and the commands say while they work, at one of three levels:

* quiet: warnings, notes and errors only (what goes to stderr as `note:` / `warning:` /
  `error:`), and each command's own answer (predict's CSV, review's lists, describe's table);
* normal (the default): also the status lines of every stage and command, and progress;
* verbose: also the details behind them.

`folderfit -q ...` / `folderfit -v ...` set the level for a command; the DVC stages take it
from the environment, as `FOLDERFIT_VERBOSITY=quiet dvc repro` (or verbose), since DVC passes
them no arguments.
"""

from __future__ import annotations

import os
import sys

LEVELS = {"quiet": 0, "normal": 1, "verbose": 2}
ENV = "FOLDERFIT_VERBOSITY"


def level() -> int:
    """The level in force: FOLDERFIT_VERBOSITY (quiet | normal | verbose), normal if unset;
    an unknown value is normal, with a note (a typo must not hide the output)."""
    name = os.environ.get(ENV, "normal").strip().lower() or "normal"
    if name not in LEVELS:
        print(f"note: {ENV}={name!r} is not one of {', '.join(LEVELS)}; using normal", file=sys.stderr)
        os.environ[ENV] = name = "normal"
    return LEVELS[name]


def set_level(name: str) -> None:
    """Set the level for this process and the processes it starts (a stage, torchrun)."""
    if name not in LEVELS:
        raise ValueError(f"unknown verbosity {name!r}")
    os.environ[ENV] = name


def say(*parts, file=None, flush: bool = False) -> None:
    """A status line, shown at the normal level and above (print's arguments)."""
    if level() >= LEVELS["normal"]:
        print(*parts, file=file or sys.stdout, flush=flush)


def detail(*parts, file=None) -> None:
    """A line for the verbose level only."""
    if level() >= LEVELS["verbose"]:
        print(*parts, file=file or sys.stdout)
