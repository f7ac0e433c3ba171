"""The command users run, timed: `dvc exp run` in a fresh clone with cold caches.

    python -m bench.exp_run --data /work/bench-data/photos-10k [-S key=value ...] [--json out.json]

Clones this repository's committed HEAD into a temp folder, points `data.source` at --data,
and runs `dvc exp run` there with an empty feature cache ($FOLDERFIT_CACHE, which also holds
the engine choice) and an empty DVC cache. Prints the whole command's wall time, each
stage's wall time (from the moment DVC announces it to the next announcement; split into the
command itself, until its process exits, and DVC's work around it: checking deps, hashing and
caching outputs), and the peak resident memory of the largest single process and of all
processes together in each stage, sampled from /proc every 0.2 s. Needs folderfit installed
(`pip install -e .`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


class MemorySampler(threading.Thread):
    """Peak RSS (largest process, sum of the tree) per stage, sampled from /proc; and when a
    child of DVC (the stage's command) was last seen alive, per stage."""

    def __init__(self, root: int, started: float):
        super().__init__(daemon=True)
        self.root, self.stage, self.peaks, self.done = root, "dvc", {}, threading.Event()
        self.started, self.child_seen = started, {}

    def run(self) -> None:
        while not self.done.wait(0.2):
            pids = _descendants(self.root)
            if len(pids) > 1:
                self.child_seen[self.stage] = time.perf_counter() - self.started
            sizes = [_rss_gib(pid) for pid in pids]
            one, tree = self.peaks.get(self.stage, (0.0, 0.0))
            self.peaks[self.stage] = (max(one, max(sizes, default=0.0)), max(tree, sum(sizes)))


def run(data: Path, sets: list[str], keep: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="exp-run-") as tmp:
        root = keep or Path(tmp)
        clone, cache = root / "clone", root / "feature-cache"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = dict(os.environ, FOLDERFIT_CACHE=str(cache), PYTHONUNBUFFERED="1")
        command = ["dvc", "exp", "run", "-S", f"data.source={data.resolve()}"]
        for item in sets:
            command += ["-S", item]
        print("$", " ".join(command), flush=True)
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=clone, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        sampler = MemorySampler(proc.pid, started)
        sampler.start()
        marks, command_at, lock_at = [], {}, {}  # when DVC announces / starts / records a stage
        for line in proc.stdout:
            sys.stdout.write(line)
            now = time.perf_counter() - started
            match = STAGE_LINE.search(line)
            if match:
                marks.append((match.group(1), now))
                sampler.stage = match.group(1)
            elif marks and line.startswith("> ") and marks[-1][0] not in command_at:
                command_at[marks[-1][0]] = now
            elif marks and line.startswith("Updating lock file") and marks[-1][0] not in lock_at:
                lock_at[marks[-1][0]] = now
        rc = proc.wait()
        wall = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        if rc:
            raise SystemExit(f"error: dvc exp run exited {rc}")
        stages = {}
        for (name, at), nxt in zip(marks, [m[1] for m in marks[1:]] + [wall]):
            one, tree = sampler.peaks.get(name, (0.0, 0.0))
            # the command's own time: from DVC's "> command" line to the last sample that saw
            # its process (DVC hashes and caches the outputs after it exits, then prints
            # "Updating lock file"); the rest is DVC's, checking deps before and caching after
            end = min(sampler.child_seen.get(name, lock_at.get(name, nxt)), lock_at.get(name, nxt))
            own = max(0.0, end - command_at.get(name, at))
            stages[name] = {"wall_s": round(nxt - at, 1), "command_s": round(own, 1),
                            "dvc_s": round(nxt - at - own, 1),
                            "peak_process_gib": round(one, 2), "peak_all_gib": round(tree, 2)}
        results = {"command": " ".join(command), "wall_s": round(wall, 1), "stages": stages}
        for name in ("eval.json", "review.json", "data.json"):
            path = clone / "metrics" / name
            if path.exists():
                results[name] = json.loads(path.read_text())
        details = clone / "metrics/train/details.json"
        if details.exists():
            results["train_details"] = json.loads(details.read_text())
        return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder of photos")
    parser.add_argument("-S", dest="sets", action="append", default=[], help="a dvc exp run -S item")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temp one)")
    args = parser.parse_args(argv)
    results = run(args.data, args.sets, args.keep)
    print(f"\n`dvc exp run`, fresh clone, cold caches: {results['wall_s']:.0f} s")
    for name, row in results["stages"].items():
        print(f"  {name:10s} {row['wall_s']:7.1f} s (command {row['command_s']:.1f} s, DVC {row['dvc_s']:.1f} s)"
              f"   peak process {row['peak_process_gib']:.2f} GiB, all processes {row['peak_all_gib']:.2f} GiB")
    evaluation = results.get("eval.json", {})
    if evaluation:
        print(f"  accuracy {evaluation.get('accuracy')} on {evaluation.get('n_images')} images "
              f"({evaluation.get('split')})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
