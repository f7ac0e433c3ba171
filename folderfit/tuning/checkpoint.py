"""Resume training after a crash: an end-of-epoch checkpoint of everything the next epoch needs.

Decisions:
* Where: `checkpoints/train.pt`, git-ignored and NOT a DVC output. DVC deletes a stage's
  outputs before it reruns the stage, so a checkpoint declared as an output would be gone by
  the time `dvc repro` restarts train (unless `persist: true`, which would then put a large,
  run-specific file into dvc.lock). Outside DVC's view it survives until train succeeds.
* What: model (or head) weights, optimizer, LR scheduler, fp16 gradient scaler, early-stopping
  state including the best epoch's weights, the history of finished epochs, and the RNG
  states (python, numpy, torch CPU/CUDA, the run's generator: shuffling, crops and flips). Restoring them all makes the rest of a resumed run
  take exactly the steps of an uninterrupted one: on CPU the model file is bitwise identical.
* When it is used: only if its fingerprint matches: a hash of every parameter, of the
  prepared data's manifest (file names + content hashes) and of the train stage's code as
  folderfit.support.provenance defines it (the same files dvc.yaml declares as its deps).
  Anything else is ignored with a note and training starts from epoch 1.
* After success it is deleted: the model file is the result; a stale checkpoint could only
  mislead a later run.
* The dvclive curves: train writes metrics/train afresh in every run (a staging folder
  swapped in at the end), so a resumed run logs the stored history first; the curves come out
  the same as those of one run.
* Saved with torch.save (atomic rename), loaded with torch.load(weights_only=True): plain
  tensors, numbers, strings and lists only.
* A checkpoint that cannot be written (full disk, read-only or blocked folder) is one warning:
  it only saves time after a crash, so training goes on without further checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

from folderfit.params import Params, as_dict
from folderfit.support.fileio import save_torch
from folderfit.support.report import say

CHECKPOINT = Path("checkpoints/train.pt")
FORMAT = "folderfit-checkpoint-1"


def fingerprint(params: Params, manifest: Path) -> str:
    """Hash of what the training result depends on: params, prepared data, code."""
    from folderfit.support.provenance import code_digest

    digest = hashlib.sha256(json.dumps(as_dict(params), sort_keys=True).encode())
    digest.update(Path(manifest).read_bytes())
    digest.update(code_digest("train").encode())
    return digest.hexdigest()


# ------------------------------------------------------------------ RNG states as tensors
def rng_state(generator: torch.Generator | None) -> dict:
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(words), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


class Checkpointer:
    """Saves after every finished epoch; restores when a matching checkpoint exists."""

    def __init__(self, path: Path, fingerprint: str, generator: torch.Generator | None):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.generator = generator
        self.writable = True  # False after a failed write: one warning, no further attempts

    def _load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file must not stop training: start afresh
            print(f"note: {self.path}: unreadable checkpoint ({type(exc).__name__}); "
                  f"training from epoch 1", file=sys.stderr)
            return None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            print(f"note: {self.path}: not a checkpoint of this pipeline; training from epoch 1",
                  file=sys.stderr)
            return None
        if payload.get("fingerprint") != self.fingerprint:
            print(f"note: {self.path} was made with other params, data or code; "
                  f"it is not resumed, training from epoch 1", file=sys.stderr)
            return None
        return payload

    def restore(self, module, optimizer, scheduler, stopper, scaler=None) -> tuple[int, list, bool]:
        """(last finished epoch, history, early-stopped) — (0, [], False) when starting afresh."""
        payload = self._load()
        if payload is None:
            return 0, [], False
        module.load_state_dict(payload["module"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload.get("scaler"):  # {} from a disabled (non-fp16) scaler
            scaler.load_state_dict(payload["scaler"])
        s = payload["stopper"]
        stopper.best_key = tuple(s["best_key"])
        stopper.best_epoch = s["best_epoch"]
        stopper.best_state = s["best_state"]
        stopper.bad_epochs = s["bad_epochs"]
        stopper.floor = s.get("floor")
        set_rng_state(payload["rng"], self.generator)
        say(f"resuming from {self.path}: epoch {payload['epoch']} finished", flush=True)
        return payload["epoch"], list(payload["history"]), bool(payload["stopped"])

    def save(self, epoch: int, module, optimizer, scheduler, stopper, history: list,
             stopped: bool, scaler=None) -> None:
        if not self.writable:
            return
        payload = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "stopped": stopped,
            "module": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "stopper": {"best_key": list(stopper.best_key), "best_epoch": stopper.best_epoch,
                        "best_state": stopper.best_state, "bad_epochs": stopper.bad_epochs,
                        "floor": stopper.floor},
            "history": history,
            "rng": rng_state(self.generator),
        }
        try:
            save_torch(payload, self.path)
        except OSError as exc:  # folderfit.support.fileio's one-line OutputError is an OSError too
            self.writable = False
            print(f"warning: no resume checkpoint: {exc}; training goes on without "
                  f"checkpoints", file=sys.stderr, flush=True)

    def finish(self) -> None:
        """Training succeeded and its outputs are written: the checkpoint has served."""
        with contextlib.suppress(OSError):  # also when checkpoints/ is blocked by a file
            self.path.unlink(missing_ok=True)
