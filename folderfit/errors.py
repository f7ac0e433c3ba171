"""The one error type users see, and the wrapper that turns it into a one-line message."""

from __future__ import annotations

import os
import sys


class PipelineError(Exception):
    """A problem the user can fix: the message names the file or key and what to do."""


class OutputError(PipelineError, OSError):
    """An output could not be written (full disk, read-only folder, a file where a folder
    should be). Also an OSError, so code that tolerates unwritable optional files (the feature
    cache, checkpoints) keeps catching it as one. Made by folderfit.fileio.output_error."""


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
    except OSError as exc:  # an output written without folderfit.fileio (e.g. by a library)
        from folderfit.fileio import is_write_error, output_error

        if not is_write_error(exc) or not exc.filename:
            raise
        print(f"error: {output_error(exc, exc.filename)}", file=sys.stderr)
        sys.exit(2)
