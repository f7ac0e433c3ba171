"""Stage `preflight`: check params.yaml and data.source before any other stage does work.

DVC gives a stage no chance to object before it runs: unknown keys (`dvc exp run -S +key=1`)
change no stage's params, so nothing would run and nothing would complain; a missing
data.source, a name that is not UTF-8 or a broken link in it stop DVC itself with a raw error
while it hashes prepare's dependencies. This stage depends on the whole params.yaml
(dvc.yaml: `params: [params.yaml: ]`), so any edit reruns it first, and it runs the one
validation every stage runs (folderfit.params.load_params, via folderfit.cli.stage_main).

It is also how a project made by `folderfit init` follows the INSTALLED library: the stage is
`always_changed` (dvc.yaml), and its output holds the folderfit version and a digest of the
package's .py files. Every other stage depends on that output, not on a source folder, so
DVC reruns them exactly when the library they import changed (an upgrade, or an edit in an
editable install); a valid params edit reruns only the stages whose own params or data changed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import folderfit
from folderfit.errors import PipelineError
from folderfit.images import image_folder
from folderfit.paths import DEMO_DIR, PREFLIGHT_OK
from folderfit.support.fileio import write_text
from folderfit.support.provenance import LIBRARY, library_files
from folderfit.support.report import say

# project templates `folderfit init` copies: not code any stage runs
TEXT = ("params.yaml and data.source passed folderfit's preflight checks. Every other stage "
        "depends on this file; it changes only when the folderfit library above does.\n")


def library_digest(library: Path = LIBRARY) -> str:
    """sha256 over the names and contents of provenance.library_files (~50 small files: cheap)."""
    digest = hashlib.sha256()
    for path in library_files(library):
        digest.update(path.relative_to(library).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def stamp(library: Path = LIBRARY, version: str = folderfit.__version__) -> str:
    """The content of data/preflight.ok: what the downstream stages' dependency records."""
    return f"folderfit {version}\nlibrary sha256 {library_digest(library)}\n{TEXT}"


def check_source_names(source: str) -> None:
    """data.source exists (or is the demo set that demo_data makes) and holds no name DVC
    cannot track."""
    if os.path.normpath(source) == os.path.normpath(DEMO_DIR) and not Path(source).exists():
        return  # made by the demo_data stage, which runs next
    path = image_folder.check_source(source)
    not_utf8, broken = image_folder.names_dvc_cannot_track(path)
    shown = image_folder.printable(source)
    if not_utf8:
        raise PipelineError(
            f"data.source {shown}: names that are not valid UTF-8 ({', '.join(not_utf8)}); DVC "
            f"cannot track them, so `dvc repro` would stop at prepare: rename them, e.g. "
            f"convmv -r -f latin1 -t utf-8 --notest {shown}")
    if broken:
        raise PipelineError(
            f"data.source {shown}: broken symbolic links ({', '.join(broken)}); DVC cannot hash "
            f"data.source while they are there: delete them or restore what they point to")


def run(params) -> None:
    check_source_names(params.data.source)
    if params.cpu_engine == "openvino":  # optional: stop here, not after prepare
        from folderfit.compute import openvino_engine

        openvino_engine.require("params.yaml: 'cpu_engine'")
    write_text(PREFLIGHT_OK, stamp())
    say(f"preflight: params.yaml and data.source {image_folder.printable(params.data.source)} OK")
