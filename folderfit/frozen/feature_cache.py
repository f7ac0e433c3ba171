"""Backbone features of prepared images, computed once per image and view, and kept in a
content-keyed cache that the review stage and feature_extract training share.

A cached vector is found by two digests:
* the spec: everything about the computation that changes it: the backbone's weights (a
  digest of every tensor of the frozen backbone, so a model name, weights file, seed of a
  random init or timm version that changes a weight changes the key), the preprocessing
  (size, resize, mean/std, interpolation, crop rule, and the torchvision version that
  resizes), the view (clean, flipped, or augmented crop k with its settings and seed), the
  engine that runs the backbone and its version (torch, or ONNX Runtime on a CPU:
  folderfit.compute.cpu_engine), the precision (fp32 / bf16 / fp16: a bf16 vector differs from an
  fp32 one), the device kind (cpu / cuda / mps: other kernels), the batch shape (kernels are
  chosen by shape) and FEATURE_VERSION;
* the image: sha256 of the image file's bytes (the original prepare listed), with the
  image_size its stored copy is made for.
Loaded vectors are checked: a pack whose checksum (sha256 of its keys and numbers, stored in
it) does not match, whose width is not the backbone's, or that holds NaN/Inf is discarded
with a one-line note, deleted, and its vectors recomputed. (The checksum catches a damaged or
edited pack; it cannot catch a pack forged with a fresh checksum: the cache is a local memo,
not a trust boundary.) A computation that yields NaN/Inf is an error, never cached.
A hit therefore returns exactly the numbers a fresh computation would: the backbone runs in
eval mode and every batch is padded to one shape, so an image's features do not depend on
which other images share its batch (kernels are chosen by shape: a batch of 3 and one of 64
gave different last bits, measured on CPU). Reruns stay byte-identical, cache warm or cold.

Where: $FOLDERFIT_CACHE/features, else ~/.cache/folderfit/features; one folder per spec,
holding packs (`<digest>.pt`: keys + a float32 matrix) written atomically, so a killed run
keeps what it finished. The cache is a pure memo outside DVC's view: deleting it costs only
time. If it cannot be written, features are computed without it (one note).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from folderfit.artifacts.model_file import Numerics
from folderfit.compute import cpu_engine, openvino_engine
from folderfit.compute.inference import infer_batches, make_loader, pad_batch
from folderfit.compute.runtime import Runtime
from folderfit.errors import PipelineError
from folderfit.images import datasets
from folderfit.paths import cache_root
from folderfit.support.fileio import (
    NotRegularFile,
    open_regular,
    save_torch,
    sha256_file,
)

FEATURE_VERSION = 2  # 2: packs carry a checksum; precision, device, batch in the key
CROP_RULE = "resize shorter side to resize_size (antialiased), centre crop image_size"
PACK_EVERY = 1024  # images per pack while computing: a killed run loses at most this many
# Memory bounds of the decode-once memos (least recently used first out): the decoding
# process keeps an image while its views, side by side in the stream, are made; the main
# process keeps clean views' pixels for the mirrored views of a later stream (small sets).
JOB_MEMO_BYTES = 256 << 20
CLEAN_PIXELS_BYTES = 512 << 20
COMPACT_ABOVE = 8  # packs in one spec folder before they are merged into one


@dataclass(frozen=True)
class View:
    """How an image is turned into network input before the backbone.
    kind: "clean" (eval resize + centre crop), "flip" (clean, mirrored) or "augment"
    (random-resized crop with min_scale and, if hflip, a random flip; seeded per image
    by seed and index, so it is the same crop whenever and wherever it is computed)."""

    kind: str
    index: int = 0
    min_scale: float = 1.0
    hflip: bool = False
    seed: int = 0

    @property
    def name(self) -> str:
        return self.kind if self.kind != "augment" else f"augment{self.index}"


CLEAN = View("clean")
FLIP = View("flip")




def weights_digest(backbone: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def pack_checksum(keys: list[str], matrix: torch.Tensor) -> str:
    """sha256 of a pack's keys and float32 numbers, stored in the pack and checked on load."""
    digest = hashlib.sha256("\n".join(keys).encode())
    data = matrix.detach().cpu().to(torch.float32).contiguous()
    digest.update(f"{tuple(data.shape)}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


class _Memo:
    """uint8 images by key, the most recently used kept within the memory budget."""

    def __init__(self, budget: int):
        self.images: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.bytes, self.budget = 0, budget

    def put(self, key: str, image: torch.Tensor) -> None:
        if key in self.images or image.numel() > self.budget:
            return
        self.images[key] = image
        self.bytes += image.numel()
        while self.bytes > self.budget:
            self.bytes -= self.images.popitem(last=False)[1].numel()

    def get(self, key: str) -> torch.Tensor | None:
        image = self.images.get(key)
        if image is not None:
            self.images.move_to_end(key)
        return image

    def get_or_make(self, key: str, make) -> torch.Tensor:
        image = self.get(key)
        if image is None:
            image = make()
            self.put(key, image)
        return image


class _Jobs(torch.utils.data.Dataset):
    """(uint8 image after its view's geometry, job index) for a list of (file, key, view) jobs.
    The clean and the mirrored view of an image share one decode and one resize: `pixels`
    holds eval-geometry images made by an earlier stream (passed in by the main process), a
    small memo those made here (an image's views are adjacent in the stream); random crops
    share one decode per image the same way."""

    def __init__(self, jobs: list[tuple[Path, str, View]], preprocess, pixels: dict):
        self.jobs = jobs
        self.preprocess = preprocess
        self.eval_geometry = datasets.eval_geometry(preprocess)
        self.train_geometry = {}
        self.ready = pixels  # made by an earlier stream: kept for this whole stream
        self.pixels = _Memo(JOB_MEMO_BYTES)
        self.decoded = _Memo(JOB_MEMO_BYTES)

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int):
        path, key, view = self.jobs[i]
        if view.kind in ("clean", "flip"):
            image = self.ready.get(key)
            if image is None:
                image = self.pixels.get_or_make(key, lambda: self.eval_geometry(datasets.decode_file(path)))
            return (image if view.kind == "clean" else image.flip(-1)), i
        image = self.decoded.get_or_make(key, lambda: datasets.decode_file(path))
        geometry = self.train_geometry.get((view.min_scale, view.hflip))
        if geometry is None:
            geometry = datasets.train_geometry(self.preprocess, view.hflip, view.min_scale)
            self.train_geometry[(view.min_scale, view.hflip)] = geometry
        seed = int(hashlib.sha256(f"{view.seed}:{view.index}:{key}".encode()).hexdigest()[:15], 16)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return geometry(image), i


def decode_workers(rt: Runtime) -> int:
    """One decoding process on CPU too: it prepares the next batches while the backbone runs
    (decoding is ~5% of a backbone pass, so one process keeps up and leaves the cores to the
    model). On a GPU, the loader's usual workers."""
    from folderfit.compute.inference import loader_workers

    return loader_workers(rt) if rt.device.type == "cuda" else 1


def _padded(loader, batch_size: int):
    """Batches of one fixed shape (the last one padded with copies of its first image)."""
    for images, indices in loader:
        yield pad_batch(images, batch_size), (indices, len(images))


class FeatureCache:
    """Packs of feature vectors for one spec (see the module docstring)."""

    def __init__(self, folder: Path | None, width=None):
        """width: a callable giving the backbone's feature width (called only when there are
        packs to check)."""
        self.folder = folder
        self.vectors: dict[str, torch.Tensor] = {}
        if folder is not None and folder.is_dir():
            for pack in sorted(folder.glob("*.pt")):
                self._read(pack, width)

    @staticmethod
    def _problem(payload, width) -> str | None:
        """Why a loaded pack cannot be used, or None."""
        if not isinstance(payload, dict) or not {"keys", "features", "sha256"} <= set(payload):
            return "not a feature pack of this version"
        keys, matrix = payload["keys"], payload["features"]
        if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2 or \
                matrix.dtype != torch.float32 or not isinstance(keys, list) or \
                len(keys) != len(matrix):
            return "keys and rows differ"
        if width is not None and matrix.shape[1] != width():
            return f"vectors of width {matrix.shape[1]}, the backbone gives {width()}"
        if not torch.isfinite(matrix).all():
            return "NaN or Inf in its vectors"
        if payload["sha256"] != pack_checksum(keys, matrix):
            return "checksum mismatch (the file was changed after it was written)"
        return None

    def _read(self, pack: Path, width=None) -> None:
        try:
            with open_regular(pack) as fh:  # a named pipe here would block the run for ever
                payload = torch.load(fh, map_location="cpu", weights_only=True)
            problem = self._problem(payload, width)
        except NotRegularFile as exc:
            print(f"note: feature cache {pack}: {exc.strerror}; skipped (delete it: the cache "
                  f"only holds files it wrote)", file=sys.stderr)
            return
        except Exception as exc:  # a damaged pack only costs its recomputation
            problem = f"unreadable ({type(exc).__name__})"
        if problem:
            print(f"note: feature cache {pack}: {problem}; discarded, its vectors are "
                  f"recomputed", file=sys.stderr)
            with contextlib.suppress(OSError):  # a memo of ours: a bad one would be met every run
                pack.unlink(missing_ok=True)
            return
        self.vectors.update(zip(payload["keys"], payload["features"]))

    def add(self, keys: list[str], matrix: torch.Tensor) -> None:
        self.vectors.update(zip(keys, matrix))
        if self.folder is None or not keys:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            packs = sorted(self.folder.glob("*.pt"))
            if len(packs) >= COMPACT_ABOVE:  # merge everything known into one pack
                keys, matrix = list(self.vectors), torch.stack(list(self.vectors.values()))
            name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20]
            matrix = matrix.to(torch.float32).contiguous()
            save_torch({"keys": list(keys), "features": matrix,
                        "sha256": pack_checksum(list(keys), matrix)}, self.folder / f"{name}.pt")
            if len(packs) >= COMPACT_ABOVE:
                for old in packs:
                    if old.name != f"{name}.pt":
                        old.unlink(missing_ok=True)
        except OSError as exc:
            print(f"note: feature cache {self.folder} not writable ({exc.strerror or exc}); "
                  f"features are computed without it", file=sys.stderr)
            self.folder = None


class _EngineChanged(Exception):
    """ONNX Runtime turned out unusable: the lookups start again under torch's keys."""


def mean_over_views(per_view: list[torch.Tensor]) -> torch.Tensor:
    """Per image, the mean over its views (clean, mirrored) of a vector, features or logits:
    the one way views are averaged, as FlipTTA averages the whole model's logits. The head is
    linear, so its logits on the mean of the features equal the mean of its logits."""
    return torch.stack(per_view).mean(0)


class FeatureExtractor:
    """Pooled features of a frozen backbone (its head replaced by Identity) for image files,
    one view at a time, through the cache. `engine` is params.yaml's cpu_engine: which engine
    runs the backbone (folderfit.compute.cpu_engine); ONNX Runtime or OpenVINO is prepared only
    when a vector has to be computed, so a run served by the cache never exports the graph.
    `fallback`: an engine that cannot run turns into torch with a note instead of an error
    (default: for `auto` only)."""

    def __init__(self, backbone: nn.Module, preprocess, rt: Runtime, batch_size: int,
                 use_cache: bool = True, engine: str = "auto", fallback: bool | None = None):
        self.backbone = backbone.eval()
        self.preprocess = preprocess
        self.rt = rt
        self.batch_size = batch_size
        self.normalizer = datasets.Normalizer(preprocess.mean, preprocess.std).to(rt.device)
        self.engine_choice = engine
        self.fallback = engine == "auto" if fallback is None else fallback
        self.engine = cpu_engine.planned_engine(engine, rt)  # "onnxruntime" | "openvino" | "torch"
        self.engine_label = f"torch {torch.__version__}"  # the engine as the cache key names it
        if self.engine in ("onnxruntime", "openvino"):
            module = openvino_engine if self.engine == "openvino" else cpu_engine
            try:
                self.engine_label = f"{self.engine} {module.version()}"
            except ImportError as exc:
                self._use_torch(f"{self.engine} is not installed ({exc.name})")
        self._runner = None  # what runs the backbone, built on the first computation
        self.weights = weights_digest(backbone)
        self._width: int | None = None
        self.root = cache_root() / "features" if use_cache else None
        # clean views' pixels from the batches, for the mirrored views of a later stream
        self._pixels = _Memo(CLEAN_PIXELS_BYTES)
        self._keys: dict[Path, str] = {}
        self._reset()

    @property
    def numerics(self) -> str:
        """What really ran the backbone, with its precision ("onnxruntime-fp32"; a failed
        export falls back to torch)."""
        return str(Numerics(self.engine, self.rt.precision))

    def _reset(self) -> None:
        import torchvision

        self.base_spec = {"version": FEATURE_VERSION, "weights": self.weights,
                          "preprocess": {**self.preprocess.to_dict(), "crop": CROP_RULE,
                                         "torchvision": torchvision.__version__},
                          "engine": self.engine_label, "precision": self.rt.precision,
                          "device": self.rt.device.type, "batch_size": self.batch_size}
        self._caches: dict[View, FeatureCache] = {}  # also memoises when the disk cache is off
        self._served: set[tuple[str, View]] = set()  # (image key, view) pairs counted below
        self.computed = self.reused = 0  # vectors computed / found in the cache, each pair once

    def _use_torch(self, reason: str) -> None:
        """ONNX Runtime or OpenVINO cannot be used. Asked for (cpu_engine onnxruntime or openvino):
        an error; with `fallback` (auto): a note, then torch for the whole run."""
        name = cpu_engine.ENGINE_NAMES[self.engine]
        if not self.fallback:
            install = f" ({openvino_engine.INSTALL})" if "not installed" in reason and self.engine == "openvino" else ""
            raise PipelineError(f"params.yaml: 'cpu_engine' is '{self.engine_choice}', but {name} "
                                f"cannot run this backbone: {reason}{install}; set cpu_engine: auto or torch")
        print(f"note: features computed with torch, not {name}: {reason}", file=sys.stderr)
        self.engine, self.engine_label = "torch", f"torch {torch.__version__}"

    def feature_width(self) -> int:
        """The backbone's vector width (one forward pass of a blank image, done once)."""
        if self._width is None:
            param = next(self.backbone.parameters(), None)
            device = param.device if param is not None else self.rt.device
            size = self.preprocess.image_size
            with torch.no_grad(), self.rt.autocast():
                out = self.backbone(torch.zeros(1, 3, size, size, device=device))
            self._width = int(out.reshape(1, -1).shape[1])
        return self._width

    def spec_digest(self, view: View) -> str:
        spec = {**self.base_spec, "view": asdict(view)}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]

    def keys(self, files: list[Path]) -> list[str]:
        for f in files:
            if f not in self._keys:
                # a listed original's stored copy also depends on the size prepare made it for
                size = getattr(f, "image_size", 0)
                self._keys[f] = sha256_file(f) + (f"@{size}" if size else "")
        return [self._keys[f] for f in files]

    def missing(self, files: list[Path], view: View = CLEAN) -> list[Path]:
        """The files whose vector under `view` is not cached yet (nothing is computed)."""
        if view not in self._caches:
            folder = self.root / self.spec_digest(view) if self.root else None
            self._caches[view] = FeatureCache(folder, self.feature_width)
        vectors = self._caches[view].vectors
        return [f for f, key in zip(files, self.keys(files)) if key not in vectors]

    def features(self, files: list[Path], view: View = CLEAN, desc: str = "features") -> torch.Tensor:
        """[len(files), feature dim] float32, in file order."""
        return self.features_of([(files, view)], desc)[0]

    def features_of(self, requests: list[tuple[list[Path], View]],
                    desc: str = "features") -> list[torch.Tensor]:
        try:
            return self._features_of(requests, desc)
        except _EngineChanged:
            return self._features_of(requests, desc)

    def _features_of(self, requests: list[tuple[list[Path], View]],
                     desc: str) -> list[torch.Tensor]:
        """The features of several (files, view) requests, each [len(files), dim] in file order.
        Every missing (image, view) pair is computed in ONE stream of fixed-size batches (only
        its very last batch is padded), in request order; an image decodes once for all its
        views; a view's vectors are stored as soon as its last job is done (and every
        PACK_EVERY jobs), so a killed run keeps what it finished."""
        caches, jobs, queued = self._caches, [], set()
        for files, view in requests:
            if view not in caches:
                folder = self.root / self.spec_digest(view) if self.root else None
                caches[view] = FeatureCache(folder, self.feature_width)
            for path, key in zip(files, self.keys(files)):
                if key in caches[view].vectors:
                    if (key, view) not in self._served:  # counted once: found in the cache
                        self._served.add((key, view))
                        self.reused += 1
                elif (key, view) not in queued:
                    self._served.add((key, view))
                    queued.add((key, view))
                    jobs.append((path, key, view))
        if jobs:
            # an image's views side by side: one decode serves them all from a small memo
            first = {}
            for n, (_, key, _) in enumerate(jobs):
                first.setdefault(key, n)
            jobs.sort(key=lambda job: first[job[1]])
            views = ", ".join(dict.fromkeys(view.name for _, _, view in jobs))
            self._compute(jobs, caches, f"{desc} ({views})")
            self.computed += len(jobs)
        return [torch.stack([caches[view].vectors[k] for k in self.keys(files)]) if files
                else torch.zeros(0, 0) for files, view in requests]

    def _backbone_runner(self):
        if self._runner is None:
            self._runner = self.backbone
            if self.engine in ("onnxruntime", "openvino"):
                prepare = (cpu_engine.openvino_backbone if self.engine == "openvino"
                           else cpu_engine.export_backbone)
                try:
                    self._runner = prepare(self.backbone, self.preprocess.image_size, self.batch_size)
                except cpu_engine.EngineUnavailable as exc:
                    self._use_torch(str(exc))
                    self._reset()  # the lookups so far were under ONNX Runtime's keys
                    raise _EngineChanged from exc
        return self._runner

    def _remember(self, batches, jobs: list):
        """Pass the batches on, keeping each clean view's pixels (a copy: not the batch)."""
        for images, indices in batches:
            for image, i in zip(images, indices.tolist()):
                if jobs[i][2].kind == "clean":
                    self._pixels.put(jobs[i][1], image.clone())
            yield images, indices

    def _compute(self, jobs: list, caches: dict, desc: str) -> None:
        # its own generator: a DataLoader draws a seed when iterated, and drawing it from the
        # global stream would make later augmentation depend on whether the cache was warm
        have = self._pixels.images
        ready = {key: have[key] for _, key, view in jobs if view.kind == "flip" and key in have}
        dataset = _Jobs(jobs, self.preprocess, ready)
        loader = make_loader(dataset, self.batch_size, self.rt, generator=torch.Generator(),
                             workers=decode_workers(self.rt))
        batches = iter(loader)  # the decoding process starts now, while the graph is exported
        runner = self._backbone_runner()
        remaining = {}  # view -> jobs not computed yet
        for _, _, view in jobs:
            remaining[view] = remaining.get(view, 0) + 1
        pending: dict[View, tuple[list, list]] = {}

        def store(view):
            keys, rows = pending.pop(view)
            matrix = torch.stack(rows)
            bad = (~torch.isfinite(matrix).all(1)).nonzero().flatten().tolist()
            if bad:  # never cached, never used: NaN weights or an fp16 overflow
                where = next(str(path) for path, key, v in jobs if v == view and key == keys[bad[0]])
                hint = ("check the model weights (params.yaml: weights)" if self.rt.dtype is None
                        else "a precision overflow or damaged weights: try precision: fp32 in "
                             "params.yaml")
                raise PipelineError(
                    f"features: the backbone gave NaN/Inf for {len(bad)} image(s) (first: {where}, "
                    f"precision {self.rt.precision}); {hint}")
            caches[view].add(keys, matrix)

        stream = _padded(self._remember(batches, jobs), self.batch_size)
        for outputs, (indices, n) in infer_batches(runner, stream, self.normalizer, self.rt, desc=desc):
            for row, i in zip(outputs[:n], indices[:n].tolist()):
                _, key, view = jobs[i]
                keys, rows = pending.setdefault(view, ([], []))
                keys.append(key)
                rows.append(row.clone())
                remaining[view] -= 1
                if remaining[view] == 0 or len(keys) >= PACK_EVERY:
                    store(view)
        for view in list(pending):
            store(view)


def backbone_only(model: nn.Module, head_name: str) -> tuple[nn.Module, nn.Module]:
    """(the model with its head replaced by Identity, the head): model(x) then returns the
    pooled features. Put the head back with models.set_submodule(model, head_name, head)."""
    from folderfit.backbone.architecture import set_submodule

    head = model.get_submodule(head_name)
    set_submodule(model, head_name, nn.Identity())
    return model, head
