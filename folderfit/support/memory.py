"""Process memory: keep glibc's heap from fragmenting in long feature runs.

glibc serves a large allocation with mmap only until the first one is freed; then it raises
its mmap threshold to that size, and later batch-sized buffers (26 MB for 32 images at
260 px) come from the heap. Freed among long-lived small objects (the decoded images kept
for mirrored views), their holes cannot be returned or reused for the next buffers, so the
heap grows with every batch (about twice the memory on a thousand photos, docs/speed.md). A
fixed threshold keeps every buffer of MMAP_THRESHOLD or more outside the heap, returned to
the system when freed (at the price of page faults per batch).

That price is small for ONNX Runtime, which keeps its activations in its own arena, but not
for torch on a CPU: every activation of 4 MB or more is then mapped, zero-filled by the kernel
and unmapped again, in every layer of every step, which nearly doubled a full_tune step on
a CPU (docs/speed.md). The epoch loop therefore runs under torch_compute_heap(): glibc's
largest threshold (32 MB) and a trim threshold above it, which is where glibc's own dynamic
setting ends up. A training step frees everything it allocates, so its buffers are reused
from step to step instead of fragmenting.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
MMAP_THRESHOLD = 4 << 20
GLIBC_TRIM_THRESHOLD = 128 << 10  # glibc's default
TORCH_MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit
TORCH_TRIM_THRESHOLD = 64 << 20  # 2x the mmap threshold, as glibc's dynamic setting keeps it


def _mallopt():
    """glibc's mallopt, or None (macOS, Windows, musl, or no libc found)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def _set(mmap_threshold: int, trim_threshold: int) -> bool:
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return (mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
            and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1)


def fix_mmap_threshold() -> bool:
    """Set glibc's mmap threshold to MMAP_THRESHOLD (which also stops its dynamic raising);
    False where there is no glibc (macOS, Windows, musl) or the call fails."""
    return _set(MMAP_THRESHOLD, GLIBC_TRIM_THRESHOLD)


@contextmanager
def torch_compute_heap():
    """Inside: torch's CPU buffers come from (and go back to) the heap up to 32 MB, so a
    training step does not fault in its activations afresh; after: the fixed threshold again.
    Does nothing without glibc."""
    changed = _set(TORCH_MMAP_THRESHOLD, TORCH_TRIM_THRESHOLD)
    try:
        yield changed
    finally:
        if changed:
            fix_mmap_threshold()
