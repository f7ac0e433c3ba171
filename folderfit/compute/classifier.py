"""A model file ready to classify: `folderfit.load` returns a Classifier, and `folderfit predict`
and export run files through predict_files. Every image takes the one path from file to
network input (folderfit.images.decode), so these compute what `evaluate` scores.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from folderfit.artifacts.model_file import load_model_file
from folderfit.backbone.architecture import set_submodule
from folderfit.backbone.views import FlipTTA
from folderfit.compute import decisions
from folderfit.compute.inference import infer, make_loader
from folderfit.compute.runtime import Setting, prepare_model, scoring_runtime
from folderfit.errors import PipelineError
from folderfit.images import datasets, decode


class ImageFiles(torch.utils.data.Dataset):
    """Item i: (uint8 CHW tensor after the eval geometry, or None, index, error or None).
    The tensor comes from folderfit.images.decode.network_image: the path prepare's stored copy
    takes, so evaluate's input for a prepared copy equals predict's for its original."""

    def __init__(self, files: list[Path], preprocess):
        self.files = files
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return decode.network_image(self.files[i], self.preprocess), i, None
        except decode.BadImage as exc:
            return None, i, str(exc)


def collate(items):
    """Stack the decoded images of a batch (None if none decoded); the meta is
    (indices of the decoded files, [(index, reason)] of the unreadable ones)."""
    good = [(t, i) for t, i, err in items if err is None]
    bad = [(i, err) for t, i, err in items if err is not None]
    images = torch.stack([t for t, _ in good]) if good else None
    return images, ([i for _, i in good], bad)


# ------------------------------------------------------------------ prediction
# From this many images on, a model whose scores were computed by ONNX Runtime or OpenVINO fp32
# is run by it (when installed): below, its export costs more than it saves against torch fp32.
ORT_MIN_IMAGES = 64


def onnxruntime_model(model, loaded, rt):
    """`model` (fp32, CPU) as an ONNX Runtime session or an OpenVINO compiled model where the
    file records that engine, else `model` itself: torch fp32 computes the same numbers (to
    ~1e-6 in probability), slower. So a file recording OpenVINO where openvino is not installed
    runs torch fp32 with a note, as every file does below ORT_MIN_IMAGES. The exported graph
    passes the engines' parity check against torch first. A file with decision rules exports
    its backbone only and keeps its torch head (FeaturesThenHead), so the head's input, the
    features the rules measure, stays in sight."""
    from folderfit.compute import cpu_engine

    recorded = str(loaded.numerics).rpartition("-")[0]
    if recorded not in ("onnxruntime", "openvino") or not cpu_engine.applies(rt):
        return model
    prepare = cpu_engine.openvino_backbone if recorded == "openvino" else cpu_engine.export_backbone
    try:
        if loaded.decisions is None:
            return prepare(model.eval(), loaded.preprocess.image_size, None)
        head_name = loaded.info["head_name"]
        flip = isinstance(model, FlipTTA)
        backbone = copy.deepcopy(model.model if flip else model).eval()
        set_submodule(backbone, head_name, torch.nn.Identity())
        features = prepare(backbone, loaded.preprocess.image_size, None)
        return FeaturesThenHead(features, decisions.head_module(model, head_name), flip)
    except cpu_engine.EngineUnavailable as exc:
        print(f"note: predict runs torch fp32, not {cpu_engine.ENGINE_NAMES[recorded]} ({exc}): "
              f"the same numbers", file=sys.stderr)
        return model


class FeaturesThenHead(torch.nn.Module):
    """An exported backbone's features (averaged with the mirror image's, as FlipTTA averages
    a linear head's logits) through the model's own torch head."""

    def __init__(self, features, head: torch.nn.Module, flip: bool):
        super().__init__()
        self.features, self.head, self.flip = features, head, flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if self.flip:
            f = (f + self.features(x.flip(-1))) / 2
        return self.head(f)


def predict_files(loaded, files: list[Path], batch_size: int, precision: str = "auto",
                  progress: bool | None = None, device: str = "auto", setting: Setting = Setting("api")):
    """(probabilities [n_ok, classes] float32, indices of `files` they belong to,
    [(index, reason)] of files that could not be read). The inference loop is evaluate's
    (folderfit.tuning.epoch_loop.infer)."""
    return classify_files(loaded, files, batch_size, precision, progress, device, setting)[:3]


def classify_files(loaded, files: list[Path], batch_size: int, precision: str = "auto",
                   progress: bool | None = None, device: str = "auto", setting: Setting = Setting("api")):
    """predict_files() and the model file's decisions for the files read
    (folderfit.compute.decisions.Decisions)."""
    rt = scoring_runtime(precision, device, loaded.numerics, setting)
    model = prepare_model(loaded.model, rt)
    rules = loaded.decisions
    if precision == "auto" and len(files) >= ORT_MIN_IMAGES:
        model = onnxruntime_model(model, loaded, rt)
    normalizer = datasets.Normalizer(loaded.preprocess.mean, loaded.preprocess.std).to(rt.device)
    loader = make_loader(ImageFiles(files, loaded.preprocess), batch_size, rt, collate_fn=collate)
    with capture(loaded, model) as seen:
        logits, metas = infer(model, loader, normalizer, rt, desc="predict", show_progress=progress)
    order = [i for indices, _ in metas for i in indices]
    failed = [bad for _, bads in metas for bad in bads]
    n_classes = len(loaded.class_names)
    probs = torch.softmax(logits, 1) if len(order) else torch.zeros(0, n_classes)
    decided = decisions.decide(rules, probs, decisions.features(seen), loaded.class_names)
    return probs, order, failed, decided


def capture(loaded, model):
    """The backbone features of every image `model` runs (when the file has rules to use them):
    the input of the loaded model's head, which FeaturesThenHead calls once per batch with
    features already averaged, and FlipTTA twice."""
    import contextlib

    if loaded.decisions is None:
        return contextlib.nullcontext([])
    pairs = loaded.tta == "flip" and not isinstance(model, FeaturesThenHead)
    return decisions.capture_features(loaded.model, loaded.info["head_name"], "flip" if pairs else "none")


class Classifier:
    """A trained model file, ready to classify PIL images in memory (the Python API:
    folderfit.load). Each image gets exactly predict's and evaluate's preprocessing.
    `device` and `precision` as in params.yaml (folderfit.compute.runtime)."""

    def __init__(self, loaded, precision: str = "auto", device: str = "auto",
                 setting: Setting = Setting("api")):
        self.loaded = loaded
        self.rt = scoring_runtime(precision, device, loaded.numerics, setting)
        self.model = prepare_model(loaded.model, self.rt).eval()
        self.normalizer = datasets.Normalizer(loaded.preprocess.mean, loaded.preprocess.std).to(self.rt.device)

    @classmethod
    def from_file(cls, path, precision: str = "auto", device: str = "auto") -> "Classifier":
        return cls(load_model_file(path), precision, device)

    @property
    def class_names(self) -> list[str]:
        return list(self.loaded.class_names)

    def probabilities(self, images) -> torch.Tensor:
        """[len(images), classes] float32 softmax probabilities for a list of PIL images."""
        try:  # an opened, not yet loaded JPEG is drafted exactly as predict drafts its file
            batch = torch.stack([decode.network_image(img, self.loaded.preprocess) for img in images])
        except decode.BadImage as exc:
            raise PipelineError(f"image refused: {exc}") from None
        return self.batch_probabilities(batch)

    def batch_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """probabilities() of a uint8 NCHW batch of network_image tensors (folderfit serve
        makes them itself, to name the upload an image error comes from)."""
        return self.batch_decisions(batch)[0]

    def batch_decisions(self, batch: torch.Tensor) -> tuple[torch.Tensor, decisions.Decisions]:
        """(batch_probabilities(), the model file's decisions for the batch)."""
        with capture(self.loaded, self.model) as seen:
            logits, _ = infer(self.model, [(batch, None)], self.normalizer, self.rt, show_progress=False)
        probs = torch.softmax(logits, 1)
        if not bool(torch.isfinite(probs).all()):
            raise PipelineError("the model gives non-finite probabilities (NaN/inf); the model "
                                "file is broken (NaN weights?): retrain it or use another one")
        return probs, decisions.decide(self.loaded.decisions, probs, decisions.features(seen), self.class_names)

    def classify(self, image, top_k: int = 3) -> "Classification":
        """[(class, probability)] for one PIL image, most probable first; its `.decision` is
        the model file's decision: the class, 'unsure' or 'unfamiliar'
        (folderfit.compute.decisions)."""
        try:
            batch = torch.stack([decode.network_image(image, self.loaded.preprocess)])
        except decode.BadImage as exc:
            raise PipelineError(f"image refused: {exc}") from None
        probs, decided = self.batch_decisions(batch)
        top = probs[0].topk(min(top_k, probs.shape[1]))
        return Classification([(self.class_names[int(i)], float(p)) for p, i in zip(top.values, top.indices)],
                              decision=decided.labels[0], distance=float(decided.distance[0]))


class Classification(list):
    """Classifier.classify's answer: the [(class, probability)] list, most probable first, with
    the decision (a class, 'unsure' or 'unfamiliar') and the feature distance (NaN without
    decision rules)."""

    def __init__(self, top, decision: str, distance: float):
        super().__init__(top)
        self.decision = decision
        self.distance = distance
