"""The frozen-backbone feature extractor exactly as the train stage builds it, shared by the
stages that need the same vectors (train's feature_extract and warm start, review), so they
compute the same numbers (model, weights, seed, preprocessing, batch shape, engine) and hit
the same feature-cache entries. The engine is chosen by a timed trial on this machine
(folderfit.compute.cpu_engine.choose_engine), recorded with the run."""

from __future__ import annotations

from folderfit.compute.cpu_engine import EngineChoice, choose_engine
from folderfit.frozen import feature_cache

CPU_EXTRACTION_BATCH = 32  # feature batches on CPU: as fast per image as 64, half the padding


def extraction_batch(params, rt) -> int:
    batch = params.evaluate.batch_size
    return min(batch, CPU_EXTRACTION_BATCH) if rt.device.type == "cpu" else batch


def choose(backbone, pre, params, rt) -> EngineChoice:
    """The engine that runs `backbone` for this run's settings (cpu_engine.choose_engine)."""
    return choose_engine(backbone, rt, precision=params.precision, cpu_engine=params.cpu_engine,
                         model_name=params.model_name, image_size=pre.image_size,
                         batch_size=extraction_batch(params, rt))


def feature_extractor(backbone, pre, params, rt,
                      choice: EngineChoice | None = None) -> tuple[feature_cache.FeatureExtractor, EngineChoice]:
    """(extractor of `backbone`'s features, the engine choice behind it: `choice` if made
    already, e.g. to name it in train's first line)."""
    batch = extraction_batch(params, rt)
    choice = choice or choose(backbone, pre, params, rt)
    return feature_cache.FeatureExtractor(backbone, pre, choice.rt, batch, engine=choice.cpu_engine,
                                          fallback=params.cpu_engine == "auto"), choice


def train_feature_extractor(params, n_classes: int, rt) -> tuple[feature_cache.FeatureExtractor, EngineChoice]:
    """The backbone built as `train` builds it, then feature_extractor()."""
    from folderfit.backbone import architecture
    from folderfit.compute.runtime import prepare_model

    built = architecture.build_model(params.model_name, n_classes, params.weights, params.seed)
    pre = built.preprocess.with_image_size(params.data.image_size)
    backbone, _ = feature_cache.backbone_only(prepare_model(built.model, rt), built.head_name)
    return feature_extractor(backbone, pre, params, rt)


def recorded_extractor(backbone, pre, params, rt, engine: str) -> feature_cache.FeatureExtractor:
    """An extractor that computes the features a model file records (engine "onnxruntime",
    "openvino" or "torch", in `rt`'s precision), as the train stage computed them: evaluate
    scores from the same feature-cache entries. An engine not installed here turns into torch
    fp32 with a note (the same numbers to the engines' parity tolerance), as predict does."""
    if engine == "openvino":
        return feature_cache.FeatureExtractor(backbone, pre, rt, extraction_batch(params, rt),
                                              engine="openvino", fallback=True)
    return feature_cache.FeatureExtractor(backbone, pre, rt, extraction_batch(params, rt),
                                          engine="auto" if engine == "onnxruntime" else "torch")
