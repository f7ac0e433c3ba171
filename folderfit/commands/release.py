"""`folderfit release VERSION [--stage STAGE]`: register the committed model as a version of the
dvc.yaml artifact (DVC 3 `artifacts:`, `image-classifier` in the shipped dvc.yaml) with Git Tag
Ops tags, the ones DVC Studio's model registry and `dvc artifacts get --rev/--stage` read:
`NAME@vX.Y.Z` for the version and `NAME#STAGE#N` for a stage assignment. GTO (a dependency of
DVC) writes the tags; they name the current commit, whose dvc.lock says which model file it is.

Refused, before any tag is written: a version that is not X.Y.Z or exists already, a dvc.lock
that is not committed or differs from the commit, and a model file that is not the one
dvc.lock records (a tag would name a model nobody can fetch)."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from folderfit.errors import PipelineError
from folderfit.paths import MODEL_FILE
from folderfit.support.report import say

DVC_YAML = Path("dvc.yaml")
DVC_LOCK = Path("dvc.lock")
SEMVER = re.compile(r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")


def git(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise PipelineError("git is not installed: release writes Git tags") from None


def artifact_name() -> str:
    """The dvc.yaml artifact whose path is the model file train writes."""
    from folderfit.params import read_yaml

    if not DVC_YAML.is_file():
        raise PipelineError(f"{DVC_YAML}: not found; run folderfit release in the project's root folder")
    declared = (read_yaml(DVC_YAML.read_text(), DVC_YAML) or {}).get("artifacts") or {}
    names = [name for name, spec in declared.items()
             if isinstance(spec, dict) and Path(str(spec.get("path", ""))) == MODEL_FILE]
    if len(names) != 1:
        raise PipelineError(f"{DVC_YAML}: `artifacts:` declares {len(names) or 'no'} artifact(s) with "
                            f"path {MODEL_FILE}; declare one (`folderfit init --force` writes it)")
    return names[0]


def locked_model_md5() -> str:
    """models/model.pt's md5 as the committed dvc.lock records it (train's outs)."""
    from folderfit.params import read_yaml

    lock = read_yaml(DVC_LOCK.read_text(), DVC_LOCK) or {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if Path(str(out.get("path", ""))) == MODEL_FILE and out.get("md5"):
                return out["md5"]
    raise PipelineError(f"{DVC_LOCK}: records no {MODEL_FILE}; run `dvc repro`, then commit dvc.lock")


def check_committed() -> None:
    """dvc.lock (and the graph) committed as they are, and the model file the one it records."""
    if git("rev-parse", "--verify", "-q", "HEAD").returncode != 0:
        raise PipelineError("not in a git repository with a commit: release tags the commit that "
                            "holds dvc.lock")
    if not DVC_LOCK.is_file() or git("ls-files", "--error-unmatch", str(DVC_LOCK)).returncode != 0:
        raise PipelineError(f"{DVC_LOCK} is not committed: run `dvc repro`, then "
                            f"`git add {DVC_LOCK} && git commit`")
    changed = git("status", "--porcelain", "--", str(DVC_LOCK), str(DVC_YAML), str(MODEL_FILE.parent)).stdout
    if changed.strip():
        files = ", ".join(line[3:] for line in changed.splitlines())
        raise PipelineError(f"uncommitted changes ({files}): commit them first, so that the tag names "
                            "the model they describe")
    expected = locked_model_md5()
    if MODEL_FILE.is_file():
        digest = hashlib.md5(usedforsecurity=False)
        with open(MODEL_FILE, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected:
            raise PipelineError(f"{MODEL_FILE} is not the model the committed {DVC_LOCK} records: "
                                "`dvc repro` and commit dvc.lock, or `dvc checkout` it")


def command(args) -> None:
    match = SEMVER.fullmatch(args.version)
    if not match:
        raise PipelineError(f"version {args.version!r} is not semantic (X.Y.Z, e.g. 1.0.0 or v1.0.0)")
    version = "v" + ".".join(match.groups())
    name = artifact_name()
    check_committed()
    tag = f"{name}@{version}"
    if git("rev-parse", "--verify", "-q", f"refs/tags/{tag}").returncode == 0:
        hint = f"; to assign a stage to it: gto assign {name} --version {version} --stage STAGE" \
            if args.stage else ""
        raise PipelineError(f"version {version} of {name} exists already (tag {tag}){hint}")
    try:
        from gto import api
        from gto.constants import assert_name_is_valid
        from gto.exceptions import GTOException
    except ImportError:
        raise PipelineError("release needs GTO, which DVC brings: pip install 'folderfit[pipeline]'") from None
    if args.stage:  # checked before the version tag is written: no version without its stage
        try:
            assert_name_is_valid(args.stage)
        except GTOException as exc:
            raise PipelineError(f"--stage: {exc}") from None
    message = args.message or f"Registering artifact {name} version {version}"
    try:
        api.register(".", name, "HEAD", version=version, message=message)
        tags = [tag]
        if args.stage:
            event = api.assign(".", name, args.stage, version=version, message=args.message or
                               f"Assigning stage {args.stage} to artifact {name} version {version}")
            tags.append(event.tag)
    except GTOException as exc:
        raise PipelineError(f"gto: {exc}") from None
    say(f"release: {name} {version}{f' in stage {args.stage}' if args.stage else ''} "
        f"(tags {', '.join(tags)} on {git('rev-parse', '--short', 'HEAD').stdout.strip()})")
    say(f"release: publish with `dvc push` and `git push origin {' '.join(repr(t) for t in tags)}`")
