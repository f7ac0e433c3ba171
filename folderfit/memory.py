"""Process memory: keep glibc's heap from fragmenting in long feature runs.

glibc serves a large allocation with mmap only until the first one is freed; then it raises
its mmap threshold to that size, and later batch-sized buffers (26 MB for 32 images at
260 px) come from the heap. Freed among long-lived small objects (the decoded images kept
for mirrored views), their holes cannot be returned or reused for the next buffers, so the
heap grows with every batch: measured on 1,200 photos, 3.45 GiB against 1.75 GiB with the
threshold fixed. A fixed threshold keeps every buffer of MMAP_THRESHOLD or more outside the
heap, returned to the system when freed (a few ms per batch of page faults).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 4 << 20


def fix_mmap_threshold() -> bool:
    """Set glibc's mmap threshold to MMAP_THRESHOLD (which also stops its dynamic raising);
    False where there is no glibc (macOS, Windows, musl) or the call fails."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
