"""Maintainers' command: copy the repository's project files into the package, or compare.

    python -m folderfit.project --sync [--root DIR]
    python -m folderfit.project --check [--root DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from folderfit import project
from folderfit.cli import run_main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m folderfit.project",
                                     description="Keep folderfit/project/files/ (what `folderfit init` "
                                                 "writes) equal to the repository's own files.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--sync", action="store_true", help="copy the repository's files into the package")
    what.add_argument("--check", action="store_true", help="list differences; exit 1 if any")
    parser.add_argument("--root", type=Path, default=Path(project.__file__).resolve().parents[2],
                        help="the repository root (default: the one holding this package)")
    args = parser.parse_args(argv)
    if args.sync:
        paths = project.sync(args.root)
        print(f"synced {len(paths)} files from {args.root} into {project.TEMPLATES}")
        return
    diffs = project.differences(args.root)
    for line in diffs:
        print(line)
    if diffs:
        print("run: python -m folderfit.project --sync", file=sys.stderr)
        sys.exit(1)
    print("folderfit/project/files/ matches the repository")


if __name__ == "__main__":
    run_main(lambda _argv: main())
