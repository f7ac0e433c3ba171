"""Stage `preflight`: check params.yaml and data.source before any other stage does work.

DVC gives a stage no chance to object before it runs: unknown keys (`dvc exp run -S +key=1`)
change no stage's params, so nothing would run and nothing would complain; a missing
data.source, a name that is not UTF-8 or a broken link in it stop DVC itself with a raw error
while it hashes prepare's dependencies. This stage depends on the whole params.yaml
(dvc.yaml: `params: [params.yaml: ]`), so any edit reruns it first, and it runs the one
validation every stage runs (folderfit.params.load_params, via folderfit.cli.stage_main).
Every other stage depends on its output, whose content never changes: a valid edit reruns
only the stages whose own params or data changed.
"""

from __future__ import annotations

import os
from pathlib import Path

from folderfit import data as D
from folderfit.demo import OUT_DIR as DEMO_DIR
from folderfit.errors import PipelineError
from folderfit.fileio import write_text

OUT = Path("data/preflight.ok")
TEXT = ("params.yaml and data.source passed folderfit's preflight checks. This file never "
        "changes, so a valid edit reruns only the stages whose inputs changed.\n")


def check_source_names(source: str) -> None:
    """data.source exists (or is the demo set that demo_data makes) and holds no name DVC
    cannot track."""
    if os.path.normpath(source) == os.path.normpath(DEMO_DIR) and not Path(source).exists():
        return  # made by the demo_data stage, which runs next
    path = D.check_source(source)
    not_utf8, broken = D.names_dvc_cannot_track(path)
    shown = D.printable(source)
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
    write_text(OUT, TEXT)
    print(f"preflight: params.yaml and data.source {D.printable(params.data.source)} OK")
