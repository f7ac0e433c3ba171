"""Progress of long loops, on a terminal and in logs alike.

On a terminal (stderr is a TTY) a tqdm bar is drawn. Elsewhere (CI logs, `dvc repro` piped to
a file) tqdm would stay silent, so a plain line is printed every `interval` seconds instead
(`prepare: 300/600 images (50%), 12 s, 25/s`), and one at the end when the loop took longer
than one interval. Usage:

    for item in progress(items, total=len(items), desc="prepare", unit="images"):
        ...
"""

from __future__ import annotations

import os
import sys
import time

PLAIN_INTERVAL = 10.0  # seconds between plain lines when stderr is not a terminal


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable, total: int | None = None, desc: str = "", unit: str = "items",
             interval: float | None = None, stream=None, enabled: bool | None = None):
    """Yield from `iterable`, showing progress (see the module docstring). `enabled=False`
    shows nothing; None: shown unless FOLDERFIT_PROGRESS=0 or the level is quiet."""
    stream = stream or sys.stderr
    if enabled is None:  # quiet (folderfit.support.report) shows no progress either
        from folderfit.support.report import LEVELS, level

        enabled = os.environ.get("FOLDERFIT_PROGRESS", "1") != "0" and level() >= LEVELS["normal"]
    if not enabled:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if _is_terminal(stream):
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, unit=f" {unit}", leave=False, file=stream)
        return
    yield from _plain(iterable, total, desc, unit,
                      PLAIN_INTERVAL if interval is None else interval, stream)


def _plain(iterable, total, desc, unit, interval, stream):
    start = last = time.monotonic()
    done = shown = 0

    def line(now: float) -> None:
        share = f"/{total} {unit} ({done / total:.0%})" if total else f" {unit}"
        rate = done / max(now - start, 1e-9)
        print(f"{desc}: {done}{share}, {now - start:.0f} s, {rate:.1f}/s", file=stream, flush=True)

    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= interval:
            line(now)
            last, shown = now, done
    if last != start and shown != done:  # a long loop: say that it finished
        line(time.monotonic())
