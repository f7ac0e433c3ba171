"""The image files named on a command line: files as given, folders searched recursively
(links followed, each folder once), with the reason for everything that could not be taken.
"""

from __future__ import annotations

import os
from pathlib import Path

from folderfit.images import image_folder

# ------------------------------------------------------------------ inputs
# what a folder search passes over without a word (as documented), and what it never misses
QUIET_REASONS = ("hidden file", "hidden folder", "not an image extension", "link loop")


def collect_images(paths: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files in argument order, folders sorted) and [(printable path, reason)] for what
    could not be taken: a missing path, a broken link or unreadable folder, a pipe named .jpg.
    A file named explicitly is always tried; inside folders only image extensions are taken,
    links to files and folders are followed (each folder searched once: link loops end)."""
    files, problems = [], []
    for arg in paths:
        path = Path(arg)
        shown = image_folder.printable(str(arg))
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found, skipped = image_folder.walk_images(path, image_folder.printable(str(path)), follow_folder_links=True)
            files.extend(f.path for f in found)
            for rel, reason in skipped:
                folder_problem = reason.startswith("cannot read folder")
                if not reason.startswith(QUIET_REASONS) and (
                        folder_problem or os.path.splitext(rel)[1].lower() in image_folder.IMAGE_EXTENSIONS):
                    problems.append((rel, reason))
        elif path.exists():
            problems.append((shown, image_folder.NOT_REGULAR))
        elif path.is_symlink():
            problems.append((shown, "broken symbolic link (its target does not exist)"))
        else:
            problems.append((shown, "no such file or folder"))
    return files, problems
