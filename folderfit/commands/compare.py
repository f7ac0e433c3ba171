"""`folderfit compare REV_A [REV_B]`: is the difference between two experiments real?

Reads each side's per-image predictions (evaluate's metrics/eval/) from a revision, the
workspace or a folder, pairs the images by path and prints how many flipped each way, the
accuracy difference with its 95% interval, McNemar's exact p and a one-sentence verdict
(folderfit.results.comparison has the method). `--json` prints all of it as JSON.
"""

from __future__ import annotations

import json
import sys

from folderfit.errors import PipelineError
from folderfit.results import comparison


def _sides(args) -> tuple:
    """A and B from the positional revisions and --a / --b: the revisions fill the sides no
    PATH names, A first; B left over is the workspace."""
    revs = [rev for rev in (args.rev_a, args.rev_b) if rev is not None]
    sides = []
    for path, which in ((args.a, "A"), (args.b, "B")):
        if path is not None:
            sides.append(comparison.read_path(path, path))
        elif revs:
            rev = revs.pop(0)
            sides.append(comparison.read_revision(rev, rev))
        elif which == "B":
            sides.append(comparison.read_revision(comparison.WORKSPACE, comparison.WORKSPACE))
        else:
            raise PipelineError("compare: give A as a revision (a commit, branch, tag or `dvc exp` "
                                "name) or as --a PATH")
    if revs:
        raise PipelineError(f"compare: {revs[0]!r} is one side too many; give two sides (REV_A REV_B, "
                            f"or --a / --b PATH in place of one)")
    return tuple(sides)


def command(args) -> None:
    """`folderfit compare` (arguments: folderfit.cli)."""
    if not 0 < args.min_shared <= 1:
        raise PipelineError(f"compare: --min-shared must be in (0, 1], got {args.min_shared}")
    a, b = _sides(args)
    result = comparison.compare(a, b, min_shared=args.min_shared, resamples=args.resamples, seed=args.seed)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(comparison.as_text(result, show=args.show))
