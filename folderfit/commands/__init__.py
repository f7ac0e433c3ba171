"""The `folderfit` commands, one module each with `command(args)` (argument parsing is
folderfit.cli): predict, export, describe, review, review_server (`review --serve`), ci_report,
repro_check, serve, release, init. Nothing in the library imports them, and they do not import each other.
"""
