"""folderfit.support.memory: glibc's mmap threshold is fixed in stage processes, so batch-sized
buffers leave the heap when freed instead of fragmenting it around long-lived images."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from folderfit.support import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_fixed_threshold_returns_freed_buffers():
    """The pattern of feature extraction: a 24 MB buffer per batch, freed, while small
    objects are kept. With the threshold fixed, the heap does not grow batch after batch."""
    script = textwrap.dedent("""
        import random, sys
        from folderfit.support import memory
        if sys.argv[1] == "fixed":
            assert memory.fix_mmap_threshold()
        def rss():
            return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) // 1024
        rng = random.Random(0)
        kept, start = [], rss()
        for batch in range(60):
            buffers = []
            for _ in range(3):  # batch-sized buffers of varying sizes, written to
                buffers.append(bytearray(rng.randint(5_000_000, 30_000_000)))
                kept.extend(bytearray(200_000) for _ in range(3))  # images kept for later
            del buffers
        print(rss() - start)
    """)
    grown = {mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                                      text=True, check=True).stdout)
             for mode in ("fixed", "default")}
    kept_mb = 60 * 9 * 200_000 // 2**20  # what is really kept: 103 MB
    assert grown["fixed"] <= kept_mb + 20, grown
    assert grown["default"] >= grown["fixed"] + 40, grown  # the growth it prevents (~75 MB here)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_torch_compute_heap_reuses_step_buffers_and_restores_the_fixed_threshold():
    """A training step's pattern: 8 MB buffers allocated, written and freed again and again.
    Under the fixed threshold each one is mapped and faulted in afresh (2,048 page faults per
    buffer); inside torch_compute_heap the heap serves them again; after it, the fixed
    threshold holds again."""
    script = textwrap.dedent("""
        import resource
        from folderfit.support import memory
        def faults_of_steps():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(40):
                buffer = bytearray(8 << 20)
                del buffer
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        assert memory.fix_mmap_threshold()
        fixed = faults_of_steps()
        with memory.torch_compute_heap() as changed:
            assert changed
            inside = faults_of_steps()
        after = faults_of_steps()
        print(fixed, inside, after)
    """)
    fixed, inside, after = map(int, subprocess.run([sys.executable, "-c", script], capture_output=True,
                                                   text=True, check=True).stdout.split())
    assert fixed >= 40 * 1500, (fixed, inside, after)
    assert inside <= 2 * 2100, (fixed, inside, after)  # the first buffer (and its trim) only
    assert after >= 40 * 1500, (fixed, inside, after)


def test_no_glibc_is_a_quiet_false(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory.fix_mmap_threshold() is False
    with memory.torch_compute_heap() as changed:
        assert changed is False
