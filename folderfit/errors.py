"""The error types users see (folderfit.cli turns them into one-line messages). Imports
nothing from the package, so every module can raise them."""

from __future__ import annotations


class PipelineError(Exception):
    """A problem the user can fix: the message names the file or key and what to do."""


class OutputError(PipelineError, OSError):
    """An output could not be written (full disk, read-only folder, a file where a folder
    should be). Also an OSError, so code that tolerates unwritable optional files (the feature
    cache, checkpoints) keeps catching it as one. Made by folderfit.support.fileio.output_error."""
