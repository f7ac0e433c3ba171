"""The one error type users see, and the wrapper that turns it into a one-line message."""

from __future__ import annotations

import os
import sys


class PipelineError(Exception):
    """A problem the user can fix: the message names the file or key and what to do."""


def run_main(main, argv=None) -> None:
    """Run a stage's main(); a PipelineError becomes `error: ...` on stderr and exit code 2."""
    try:
        main(argv)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # e.g. `folderfit predict dir | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
