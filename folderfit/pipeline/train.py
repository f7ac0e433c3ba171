"""Training (stage `train`): build the backbone, freeze it by strategy, train, save one model file.

* feature_extract: the frozen backbone's features of every training view and of the
  validation images come from folderfit.frozen.feature_cache (computed once, cached), and the head is
  solved exactly on them (folderfit.frozen.head), its regularisation chosen on val.
* fine_tune / full_tune: with `warm_start_head`, the head starts as that solved head (no
  random head's large early gradients reach the pretrained weights); then the epoch loop of
  folderfit.tuning.epoch_loop trains the unfrozen stages and the head.

Outputs: models/model.pt (self-contained: architecture name, classes, preprocessing, weights),
metrics/train.json (headline: strategy, best validation accuracy and loss), metrics/train/
(details.json with every fact of the run, the learning curve per class for feature_extract,
and the per-step curves logged with dvclive, drawn by `dvc plots show`), metrics/timing.json
(wall time: the one output that differs between identical reruns).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import torch

from folderfit.artifacts import (
    backbone_candidates,
    learned_from,
    learning_curve_record,
    manifest,
    model_file,
)
from folderfit.backbone import architecture
from folderfit.compute.runtime import (
    gpu_memory_guard,
    pick_runtime,
    prepare_model,
    seed_everything,
)
from folderfit.errors import PipelineError
from folderfit.frozen import backbone_choice
from folderfit.frozen import extractor as feature_extractor
from folderfit.frozen import decisions as decision_rules
from folderfit.frozen import feature_cache, learning_curve, probe
from folderfit.images import datasets, decode
from folderfit.params import Params
from folderfit.paths import MODEL_FILE, PREPARED, TIMING, TRAIN_DIR, TRAIN_METRICS
from folderfit.support.fileio import mirror_files, staged_dir, write_json
from folderfit.support.memory import torch_compute_heap
from folderfit.support.report import say
from folderfit.tuning import batches, distributed, epoch_loop, freezing
from folderfit.tuning.augment import BatchAugment
from folderfit.tuning.checkpoint import CHECKPOINT, Checkpointer, fingerprint


class EpochLog:
    """Per-step curves through dvclive (plots in metrics/train/plots/metrics/): epochs of the
    epoch loop, or the points of the head's regularisation path.

    dvclive writes into the staging folder `directory` (swapped in whole when train succeeds;
    dvclive appends rows in place, so a killed run could leave half a row). After each step the
    plots are also copied to `live`, where dvc.yaml's plots and readers during the run (`dvc
    plots show`, the VS Code extension) look, each file replaced atomically: during a run and
    after a crash they hold the curves of this run up to its last finished step, whole."""

    def __init__(self, directory: Path, live: Path | None = None):
        from dvclive import Live
        from scmrepo.exceptions import SCMError

        self.plots, self.live_plots = directory / "plots", live
        try:
            self.live = Live(dir=str(directory), save_dvc_exp=False, dvcyaml=False, report=None)
        except SCMError as exc:  # dvclive reads the git HEAD, which a brand-new repo lacks
            raise PipelineError(f"git repository problem ({exc}): commit once first, e.g. "
                                f"git add -A && git commit -m 'start'") from None

    def __call__(self, step: int, row: dict) -> None:
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            if key not in row:  # epoch 0 (the starting weights) has no training pass
                continue
            split, _, metric = key.partition("_")
            self.live.log_metric(f"{split}/{metric}", round(row[key], 6))
        for key in ("lr", "l2"):
            if key in row:
                self.live.log_metric(key, row[key])
        self.live.next_step()
        if self.live_plots is not None:
            mirror_files(self.plots, self.live_plots)

    def close(self) -> None:
        self.live.end()


def class_weights(params: Params, samples, n_classes: int) -> torch.Tensor | None:
    """balanced: weight_c = N / (classes * N_c), scikit-learn's definition (and function)."""
    if params.class_weighting == "none":
        return None
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([label for _, label in samples])
    present = np.unique(labels)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


def solve_head(built: architecture.BuiltModel, pre, params: Params, splits, rt, weights, *, log=None,
               refit: bool = False, cv_folds: int = 0, calibrate: bool = False,
               choice=None, curve: bool = False, decide: bool = False,
               known_cv: probe.CrossValidation | None = None) -> tuple[probe.SolvedHead, probe.CrossValidation | None]:
    """The head of the frozen backbone solved on its cached features (folderfit.frozen.probe) and
    put into the model; with `cv_folds`, also the cross-validation of that whole procedure
    over train + val (the honest estimate when there is no test split). `choice`: the
    engine choice made already (engine_choice), else made here. `curve`: also the learning
    curve (folderfit.frozen.learning_curve), in the result's `learning_curve`. `decide`: also
    the decision rules (folderfit.frozen.decisions), in the returned head's `decisions`.
    `known_cv`: the cross-validation of this same procedure on these same images and folds,
    made already (the backbone choice), used instead of solving it again."""
    model, head = feature_cache.backbone_only(built.model, built.head_name)
    extractor, engine_choice = feature_extractor.feature_extractor(model, pre, params, rt, choice)
    files = {split: [path for path, _ in splits[split]] for split in ("train", "val")}
    labels = {split: torch.tensor([y for _, y in splits[split]]) for split in ("train", "val")}
    # copies of one picture share a fold in the cross-validation, the decision rules' folds and
    # the learning curve: each file is hashed once for all three
    copies = [decode.content_hash(path) for path in files["train"] + files["val"]] if cv_folds or curve or decide else None

    def features(requests):
        return extractor.features_of([(files[split], view) for split, view in requests], "features")

    a = params.augment
    procedure = head_procedure(params, len(files["train"]), refit, weights, calibrate)
    hflip = procedure["hflip"]
    if hflip != a.hflip:
        say(probe.size_note(len(files["train"])))
    solved = probe.solve(features, labels["train"], labels["val"], head.out_features,
                     seed=params.seed, log=log, **procedure)
    cv = known_cv if cv_folds else None
    if cv_folds and cv is None:
        started = time.perf_counter()
        cv = probe.cross_validate(features, labels["train"], labels["val"], head.out_features,
                              folds=cv_folds, groups=copies, seed=params.seed, **procedure)
        correct = int((cv.probs.argmax(1) == cv.labels).sum())
        say(f"cross-validation ({cv.folds} folds, the whole head procedure nested in each): "
              f"{correct}/{len(cv.labels)} right out of fold [{time.perf_counter() - started:.1f} s]")
    if curve:
        solved = dataclasses.replace(solved, learning_curve=_learning_curve(features, labels, files, copies, solved,
                                                                            params, weights, head.out_features))
    if decide:
        rules = decision_rules.rules_for_head(
            features, labels["train"], labels["val"], head.out_features, cv=cv or known_cv,
            delivered_tta=solved.tta,
            target_accuracy=params.predict.target_accuracy, folds=params.evaluate.cv_folds,
            groups=copies, seed=params.seed, **procedure)
        solved = dataclasses.replace(solved, decisions=rules)
        say(f"decisions: confidence >= {rules.confidence_threshold:.4f} accepted "
            f"({rules.accepted_fraction:.1%} of {rules.n_calibration} out-of-fold images, accuracy "
            f">= {rules.accuracy_low:.4f}{'' if rules.target_met else ', target not met'}); "
            f"unfamiliar above distance {rules.distance_threshold:.4f}")
        if not rules.target_met:
            print(f"warning: predict.target_accuracy {params.predict.target_accuracy} cannot be "
                  f"certified from {rules.n_calibration} out-of-fold images (95% lower bound): "
                  f"predict will answer `unsure` for nearly every photo; lower the target or add "
                  f"photos", file=sys.stderr)
    if hflip != a.hflip:  # recorded with the run: why hflip auto used no mirror images
        solved = dataclasses.replace(solved, mirror_test={"hflip": False, "skipped": probe.size_note(len(files["train"]))})
    architecture.set_submodule(built.model, built.head_name, head)
    solved.fit.apply_to(head)
    solved = dataclasses.replace(solved, feature_engine=extractor.numerics,
)
    # how the engine was chosen goes to the log only: its trial times must not make two
    # identical runs' outputs differ
    say(f"engine: {engine_choice.describe()}")
    say(f"features: {len(files['train'])} train + {len(files['val'])} val images, "
          f"{extractor.computed} vectors computed ({extractor.numerics}), {extractor.reused} from the cache "
          f"{feature_cache.cache_root()}")
    if solved.mirror_test and "skipped" not in solved.mirror_test:
        t = solved.mirror_test
        say(f"hflip auto: val accuracy {t['val_accuracy']:.4f}, mirrored {t['val_accuracy_mirrored']:.4f} "
              f"-> flips {'on' if solved.hflip else 'off'}")
    say(f"head: views {', '.join(solved.views)}; l2 {solved.fit.l2:.3g} chosen on val (accuracy "
          f"{solved.fit.val_accuracy:.4f}, loss {solved.fit.val_loss:.4f}); flip TTA {solved.tta}"
          + ("; then solved again on train + val" if refit else ""))
    c = solved.calibration
    if c and "skipped" in c:
        say(f"head: confidences not calibrated: {c['skipped']}")
    elif c:
        say(f"head: confidences calibrated on val: temperature {c['temperature']:.3g} "
              f"(val loss {c['val_loss']:.4f} -> {c['val_loss_calibrated']:.4f}; predictions unchanged)")
    return solved, cv


def head_procedure(params: Params, n_train: int, refit: bool, weights, calibrate: bool) -> dict:
    """probe.solve's keyword arguments for this run (hflip auto: off above the size rule)."""
    a = params.augment
    return dict(hflip=probe.mirror_views_pay(a.hflip, n_train), n_views=a.feature_views,
                min_scale=a.min_scale, tta=params.evaluate.tta, refit=refit, class_weights=weights,
                label_smoothing=params.label_smoothing, calibrate=calibrate)


def choose_backbone(built: architecture.BuiltModel, pre, params: Params, splits, rt, weights, choice,
                    n_classes: int) -> backbone_choice.Choice | None:
    """feature_extract: the candidates of backbone_choice tried on train + val
    (folderfit.frozen.backbone_choice), or None when there is nothing to try (mode fast, a
    model_name or weights other than the bundled ones)."""
    if params.backbone_choice.mode == "fast":
        return None
    if len(backbone_choice.candidates(params.model_name, params.weights, params.data.image_size)) == 1:
        say(f"backbone choice: nothing to choose ({params.model_name}, weights {params.weights}: "
            f"only the bundled tf_efficientnet_lite0/1/2 with weights default are compared)")
        return None
    copies = [decode.content_hash(path) for path, _ in splits["train"] + splits["val"]]
    procedure = head_procedure(params, len(splits["train"]), params.refit_head, weights, True)

    def build(candidate):
        other = architecture.build_model(candidate.model_name, n_classes, params.weights, params.seed)
        backbone, _ = feature_cache.backbone_only(prepare_model(other.model, rt), other.head_name)
        return backbone, other.preprocess.with_image_size(candidate.image_size)

    backbone, head = feature_cache.backbone_only(built.model, built.head_name)
    try:
        default = feature_extractor.feature_extractor(backbone, pre, params, rt, choice)
        return backbone_choice.choose(params, splits, rt, procedure,
                                      folds=params.evaluate.cv_folds or decision_rules.DEFAULT_FOLDS,
                                      groups=copies, n_classes=n_classes, default_extractor=default,
                                      say=say, build=build)
    finally:
        architecture.set_submodule(built.model, built.head_name, head)


def choice_record(picked: backbone_choice.Choice, params: Params) -> dict:
    """metrics/train/candidates.json (no wall times: two identical runs write the same bytes)."""
    from folderfit.results.metrics import accuracy_interval

    labels = None
    rows = []
    for t in picked.tried:
        row = {"model_name": t.candidate.model_name, "image_size": t.candidate.image_size,
               "status": t.status if t.status == "skipped" or t.candidate != picked.chosen else "chosen",
               "default": t.status == "default"}
        if t.cv is not None:
            labels = t.cv.labels.numpy()
            correct = int((t.cv.probs.argmax(1) == t.cv.labels).sum())
            low, high = accuracy_interval(correct, len(labels))
            row.update(accuracy=round(correct / len(labels), 6), accuracy_ci=[round(low, 6), round(high, 6)])
            if t.candidate in picked.compared:
                diff, dlow, dhigh = picked.compared[t.candidate]
                row.update(difference=round(diff, 6), difference_ci=[round(dlow, 6), round(dhigh, 6)])
        if t.reason:
            row["reason"] = t.reason
        rows.append(row)
    nested_correct = int((picked.nested.argmax(1) == labels).sum())
    low, high = accuracy_interval(nested_correct, len(labels))
    return {"mode": params.backbone_choice.mode, "chosen": picked.chosen.model_name,
            "image_size": picked.chosen.image_size, "requested": params.model_name,
            "images": int(len(labels)), "sampled": picked.sampled,
            "rule": "model_name unless a candidate's paired 95% bootstrap interval of the out-of-fold "
                    "accuracy difference lies above 0; then the most accurate such candidate",
            "nested": {"accuracy": round(nested_correct / len(labels), 6),
                       "accuracy_ci": [round(low, 6), round(high, 6)],
                       "chosen_per_fold": [c.model_name for c in picked.nested_chosen],
                       "what": "each outer fold scored by the candidate the rule picks on the other folds"},
            "candidates": rows}


def say_choice_table(record: dict, picked: backbone_choice.Choice) -> None:
    seconds = {(t.candidate.model_name, t.candidate.image_size): t for t in picked.tried}
    say(f"backbone choice on {record['images']} train + val images"
        f"{' (a stratified sample)' if record['sampled'] else ''}, out-of-fold accuracy (Wilson 95%), "
        f"paired difference vs {record['requested']} (bootstrap 95%):")
    for row in record["candidates"]:
        t = seconds[row["model_name"], row["image_size"]]
        acc = (f"{row['accuracy']:.3f} ({row['accuracy_ci'][0]:.3f}-{row['accuracy_ci'][1]:.3f})"
               if "accuracy" in row else "-")
        diff = (f"{row['difference']:+.3f} ({row['difference_ci'][0]:+.3f} to {row['difference_ci'][1]:+.3f})"
                if "difference" in row else "-")
        status = row["status"] + (" (default)" if row["default"] and row["status"] == "chosen" else "")
        say(f"  {row['model_name']:<22} {row['image_size']:>4}px  {acc:<22} {diff:<26} "
            f"{t.seconds:6.1f} s ({t.computed} vectors computed)  {status}"
            + (f": {row['reason']}" if "reason" in row else ""))
    n = record["nested"]
    say(f"backbone choice: {record['chosen']} @{record['image_size']} px; choose-then-deliver, nested "
        f"out of fold: {n['accuracy']:.4f} ({n['accuracy_ci'][0]:.3f}-{n['accuracy_ci'][1]:.3f}), "
        f"folds chose {', '.join(n['chosen_per_fold'])}")


def engine_choice(built: architecture.BuiltModel, pre, params: Params, rt):
    """The engine (and precision) that will run the frozen backbone for the head's features
    (feature_extractor.choose), chosen before anything is printed so that train's first line names
    it; the model keeps its head."""
    backbone, head = feature_cache.backbone_only(built.model, built.head_name)
    try:
        return feature_extractor.choose(backbone, pre, params, rt)
    finally:
        architecture.set_submodule(built.model, built.head_name, head)


def numerics_text(rt, strategy: str, choice) -> str:
    """What computes what, for train's first line: the features' engine for feature_extract;
    the training precision and the scoring numerics (validation, evaluate) otherwise."""
    device = rt.describe().split(",")[0]
    if strategy == "feature_extract":
        return f"{device}, features: {choice.engine if choice else 'torch-' + rt.precision}"
    scores = f"torch-{choice.rt.precision}" if choice else f"torch-{rt.precision}"
    return f"{rt.describe()} (training); validation and scores: {scores}"


def run(params: Params) -> None:
    ctx = distributed.init_from_env(params.device)  # torchrun: one process per GPU; see folderfit/tuning/distributed.py
    try:
        # metrics/train is built beside its place and swapped in whole at the end, so a failed
        # run leaves the previous details and learned_from (DVC keeps them: persist: true in
        # dvc.yaml); only the curves under plots/ follow the run as it goes (EpochLog)
        with staged_dir(TRAIN_DIR) if ctx.is_main else contextlib.nullcontext() as curves:
            _train(params, ctx, curves)
    finally:
        distributed.finish(ctx)


def _train(params: Params, ctx: distributed.DistContext, curves: Path | None) -> None:
    started = time.perf_counter()
    generator = seed_everything(params.seed)
    rt = pick_runtime(params.precision, params.device)
    classes, splits = manifest.read_manifest(PREPARED)
    if "val" not in splits:
        raise PipelineError(f"{PREPARED}: no validation images; rerun prepare with data.val_fraction > 0")
    n_train = len(splits["train"])
    strategy = (freezing.auto_strategy(n_train, rt.device.type) if params.strategy == "auto"
                else params.strategy)
    if params.strategy == "auto":
        say(f"strategy auto: {n_train} training images on {rt.device.type} -> {strategy}")
    # What the model learns from; evaluate scores only what is left (folderfit.artifacts.learned_from).
    learned = {"train": splits["train"], "val_selection": splits["val"]}
    cv_folds = 0
    if "test" not in splits and strategy == "feature_extract":
        cv_folds = params.evaluate.cv_folds
    elif "test" not in splits:
        hashes = manifest.content_hashes(PREPARED)  # copies of one picture stay in one half
        groups = [hashes.get(p.as_posix(), p.as_posix()) for p, _ in splits["val"]]
        selection, holdout = learned_from.holdout_split(splits["val"], params.seed, groups)
        if holdout:
            splits = {**splits, "val": selection}
            learned["val_selection"] = selection
            say(f"no test split: {len(holdout)} of the val images are held out for evaluate "
                  f"(split val_holdout); {len(selection)} choose the best epoch")
        else:  # evaluate will say that nothing is left to score honestly
            say("note: no test split and at most one val image per class: none can be held "
                  "out, so evaluate will have nothing honest to score; set data.test_fraction > 0")
    built = architecture.build_model(params.model_name, len(classes), params.weights, params.seed)
    distributed.reseed_augmentation(ctx, params.seed)
    pre = built.preprocess.with_image_size(params.data.image_size)
    n_frozen = freezing.frozen_stage_count(strategy, params.freeze_layers, len(built.stages))
    frozen = freezing.apply_freezing(built.model, built.stages, n_frozen)
    built.model = model = prepare_model(built.model, rt)
    weights = class_weights(params, splits["train"], len(classes))
    pretrained = built.weights.source != "none"
    # the runs that solve a head on frozen features: its engine is chosen first
    choice = (engine_choice(built, pre, params, rt) if strategy == "feature_extract" or
              (pretrained and (params.warm_start_head or params.augment.hflip == "auto")) else None)
    say(f"train: {params.model_name} (weights: {built.weights.source}), {strategy}, "
          f"{n_frozen}/{len(built.stages)} stages frozen, {freezing.count_trainable(model):,d} trainable "
          f"parameters, {n_train} train / {len(splits['val'])} val images, "
          f"{numerics_text(rt, strategy, choice)}")
    log = EpochLog(curves, live=TRAIN_DIR / "plots") if ctx.is_main else None
    checkpointer = None
    picked = None  # feature_extract: the backbone choice (folderfit.frozen.backbone_choice)
    # On a GPU the heavy batches are evaluate.batch_size for feature_extract, batch_size otherwise.
    batch_key, batch = (("evaluate.batch_size", params.evaluate.batch_size)
                        if strategy == "feature_extract" else ("batch_size", params.batch_size))
    # closing(): the curves are flushed however training ends.
    with gpu_memory_guard(batch_key, batch), (contextlib.closing(log) if log else contextlib.nullcontext()):
        if strategy == "feature_extract":
            choice_started = time.perf_counter()
            picked = choose_backbone(built, pre, params, splits, rt, weights, choice, len(classes))
            choice_s = time.perf_counter() - choice_started if picked else None
            known_cv = None
            if picked:
                record = choice_record(picked, params)
                say_choice_table(record, picked)
                chosen = picked.chosen
                if chosen.model_name != params.model_name:
                    params = backbone_choice.candidate_params(params, chosen)
                    built = architecture.build_model(chosen.model_name, len(classes), params.weights, params.seed)
                    pre = built.preprocess.with_image_size(chosen.image_size)
                    n_frozen = freezing.frozen_stage_count(strategy, params.freeze_layers, len(built.stages))
                    freezing.apply_freezing(built.model, built.stages, n_frozen)
                    built.model = model = prepare_model(built.model, rt)
                    choice = picked.engine
                # the same procedure on the same images and folds: no second solve of it
                known_cv = None if picked.sampled else picked.cv_of(chosen)
            solved, cv = solve_head(built, pre, params, splits, rt, weights, log=log,
                                    refit=params.refit_head, cv_folds=cv_folds, calibrate=True,
                                    choice=choice, curve=True, decide=True, known_cv=known_cv)
            if picked and cv is not None:
                # the honest estimate is of "choose, then deliver": the nested one (the sampled
                # rows; the rest took no part in the choice and keep the chosen one's)
                probs = cv.probs.clone()
                probs[torch.from_numpy(picked.rows)] = torch.from_numpy(picked.nested)
                cv = dataclasses.replace(cv, probs=probs)
            numerics = solved.feature_engine  # what really ran (a failed export: torch)
            flip, tta = solved.hflip, solved.tta
            outcome = {"best_val_accuracy": solved.fit.val_accuracy, "best_val_loss": solved.fit.val_loss}
            details = {"head_l2": solved.fit.l2, "head_views": solved.views,
                       "head_refit_on_train_val": solved.refit, "mirror_test": solved.mirror_test,
                       "feature_engine": solved.feature_engine, "head_calibration": solved.calibration,
                       "head_path": solved.fit.path}
            if cv is not None:
                details["cv"] = {"folds": cv.folds, "l2": cv.l2, "hflip": cv.hflip}
            if picked:
                details["backbone_choice"] = {k: record[k] for k in ("requested", "chosen", "image_size")}
                if cv is not None:
                    details["cv"]["estimate"] = "nested: the backbone choice inside the folds"
        else:
            flip, tta = _flips_for_epochs(params, built, pre, splits, rt, weights, choice)
            # validated (and so scored) in the precision of the warm start's features
            val_rt = choice.rt if choice else rt
            numerics = f"torch-{val_rt.precision}"
            result, checkpointer = _fit(params, built, pre, splits, rt, frozen, weights, generator,
                                        ctx, log, flip, tta, val_rt)
            outcome = {"best_val_accuracy": result.best_val_accuracy, "best_val_loss": result.best_val_loss}
            # (the per-epoch curves are in metrics/train/plots: a resumed run's history comes
            # from the checkpoint, and pickling it into the model file would change its bytes)
            details = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                       "delivered": "best epoch"}
            cv = None
            warm = params.warm_start_head and built.weights.source != "none"
            if result.best_epoch == 0 and warm and params.refit_head and ctx.world_size == 1:
                # no epoch beat the solved head: deliver what feature_extract would (the same
                # head refit on train + val, the pretrained backbone), never the weaker unrefit one
                say("fine-tuning did not beat the solved head on val: delivering the "
                      "feature_extract model (head solved again on train + val)")
                solve_head(built, pre, params, splits, rt, weights, refit=True, choice=choice)
                details["delivered"] = "the start: feature_extract's model (head refit on train + val)"
    distributed.report_sync(model, ctx)
    if not ctx.is_main:
        return
    headline = {"strategy": strategy, **{k: round(v, 6) for k, v in outcome.items()}}
    details = {
        "model_name": params.model_name,
        **headline,
        "strategy_requested": params.strategy,
        "weights": built.weights.to_dict(),
        **details,
        "trainable_params": freezing.count_trainable(model),
        "total_params": sum(p.numel() for p in model.parameters()),
        "frozen_stages": n_frozen,
        "backbone_stages": len(built.stages),
        "n_train": n_train,
        "n_val": len(splits["val"]),
        "image_size": pre.image_size,
        "hflip": flip,
        "tta": tta,
        "precision": rt.precision if strategy != "feature_extract" else numerics.rpartition("-")[2],
        "device": numerics_text(rt, strategy, choice),
        # the engine and precision of the model's scores: evaluate, predict and folderfit.load
        # use them by default (runtime.scoring_runtime)
        "numerics": numerics,
        "processes": ctx.world_size,
    }
    rules = solved.decisions if strategy == "feature_extract" else None
    model_file.save_model_file(MODEL_FILE, built, classes, pre, extra=details, tta=tta,
                               decisions=rules.to_payload() if rules else None)
    write_json(curves / "details.json", details)
    learned_from.write_learned_from(curves, learned)
    if strategy == "feature_extract" and picked:
        backbone_candidates.write_candidates(curves, record)
    if cv is not None:
        learned_from.write_cv(curves, splits["train"] + splits["val"], cv)
    curve_s = None
    if strategy == "feature_extract" and solved.learning_curve is not None:
        found = solved.learning_curve
        curve_s = found.pop("seconds", None)
        record = found if "skipped" in found else learning_curve.describe(found, classes)
        learning_curve_record.write_learning_curve(curves, record)
    write_json(TRAIN_METRICS, headline)
    wall = time.perf_counter() - started
    write_json(TIMING, {"train_wall_s": round(wall, 2),
                        **({"learning_curve_s": round(curve_s, 2)} if curve_s is not None else {}),
                        **({"backbone_choice_s": round(choice_s, 2),
                            "backbone_candidates_s": {f"{t.candidate.model_name}@{t.candidate.image_size}":
                                                      round(t.seconds, 2) for t in picked.tried}}
                           if strategy == "feature_extract" and picked else {})})
    if checkpointer:
        checkpointer.finish()  # only now: the outputs it could have recovered are written
    say(f"train: val accuracy {headline['best_val_accuracy']:.4f}, {wall:.1f} s -> {MODEL_FILE}")


def _flips_for_epochs(params: Params, built: architecture.BuiltModel, pre, splits, rt, weights,
                      choice=None) -> tuple[bool, str]:
    """fine_tune / full_tune: (random flips in the epochs, test-time augmentation). The head
    solved on frozen-backbone features is the warm start (`warm_start_head`) and, with
    hflip: auto, also makes the flip choice on val; without a warm start that solve only
    decides, and the new head keeps its initialisation."""
    hflip, pretrained = params.augment.hflip, built.weights.source != "none"
    if params.warm_start_head and pretrained:
        say("head warm start: solving the head on frozen-backbone features first")
        solved, _ = solve_head(built, pre, params, splits, rt, weights, choice=choice)
        return solved.hflip, solved.tta
    if params.warm_start_head:  # a random backbone's features say nothing yet
        say("head warm start skipped: the backbone is randomly initialised (weights: none)")
    if hflip == "auto" and pretrained:
        head = built.model.get_submodule(built.head_name)
        initial = {k: v.clone() for k, v in head.state_dict().items()}
        solved, _ = solve_head(built, pre, params, splits, rt, weights, choice=choice)
        head.load_state_dict(initial)
        return solved.hflip, solved.tta
    flip = hflip is not False  # auto with a random backbone: photos are the common case
    if hflip == "auto":
        say("hflip auto: a random backbone's features cannot decide; random flips on")
    return flip, "flip" if probe.uses_tta(params.evaluate.tta, flip) else "none"


def _fit(params: Params, built: architecture.BuiltModel, pre, splits, rt, frozen, weights, generator,
         ctx: distributed.DistContext, log, flip: bool, tta: str = "none",
         val_rt=None) -> tuple[epoch_loop.FitResult, Checkpointer | None]:
    """The epoch loop for fine_tune / full_tune, with resume (single process only: under
    torchrun every rank would write the same checkpoint). Validation scores as evaluate
    will: with `tta`, in `val_rt`."""
    n_train = len(splits["train"])
    if params.batch_size > n_train:
        say(f"note: batch_size {params.batch_size} > {n_train} training images: "
              f"each epoch is a single batch of {n_train}")
    checkpointer = (Checkpointer(CHECKPOINT, fingerprint(params, manifest.manifest_path(PREPARED)), generator)
                    if ctx.world_size == 1 else None)
    run_ctx = epoch_loop.RunContext(rt, generator, ctx, log, checkpointer, distributed.reducer(ctx, rt.device),
                                val_rt=val_rt)
    groups = freezing.parameter_groups(built.model, built.stages, built.head_name, lr=params.lr,
                                backbone_lr=params.backbone_lr, lr_decay=params.lr_decay,
                                weight_decay=params.weight_decay)
    if built.weights.source != "none":  # pretrained: BatchNorm keeps its running statistics
        frozen = frozen + [m for m in freezing.batchnorm_layers(built.model) if m not in frozen]
    optimizer = torch.optim.AdamW(groups)
    store = batches.ImageStore([path for path, _ in splits["train"]], rt.device)
    say(f"data: {store.describe()}")
    sampler = distributed.train_sampler(store, ctx, params.seed)
    augment = BatchAugment(pre.image_size, params.augment.min_scale, flip)
    train_batches = batches.TrainBatches(store, [label for _, label in splits["train"]],
                                   distributed.per_rank_batch(params.batch_size, ctx), augment,
                                   distributed.augmentation_generator(ctx, generator, params.seed), sampler)
    val_batches = batches.EvalBatches(list(distributed.shard(splits["val"], ctx)), datasets.eval_geometry(pre),
                                params.evaluate.batch_size, rt.device)
    normalizer = datasets.Normalizer(pre.mean, pre.std).to(rt.device)
    cfg = epoch_loop.FitConfig(params.num_epochs, params.patience, params.label_smoothing, weights,
                           val_tta=tta)
    model = distributed.wrap(built.model, ctx)
    if params.compile:  # fixed batch shapes: one graph for training (validation runs eagerly)
        say("compile: torch.compile of the training step; the first epoch includes compiling")
        model = torch.compile(model, dynamic=False)
    with torch_compute_heap():  # torch's activations reused from step to step (folderfit.support.memory)
        result = epoch_loop.fit(model, optimizer, train_batches, val_batches, normalizer, cfg, run_ctx,
                            frozen)
    return result, checkpointer


def _learning_curve(features, labels: dict, files: dict, copies: list, solved: probe.SolvedHead, params: Params,
                    weights, n_classes: int) -> dict:
    """feature_extract: the out-of-fold learning curve of the delivered head's procedure at its
    l2 (folderfit.frozen.learning_curve), on the features the head learned from (cached), with
    the seconds it took under `seconds`; {"skipped": why} above the size budget."""
    a = params.augment
    views = probe.training_views(solved.hflip, a.feature_views, a.min_scale, params.seed)
    scored = [feature_cache.CLEAN] + ([feature_cache.FLIP] if solved.tta == "flip" else [])
    n_images, dim = len(files["train"]) + len(files["val"]), solved.fit.weight.shape[1]
    why = learning_curve.too_big(n_images, len(views), dim)
    if why:
        say(f"learning curve skipped: {why}")
        return {"skipped": why}
    started = time.perf_counter()
    wanted = list(dict.fromkeys(views + scored))
    both = features([(split, v) for v in wanted for split in ("train", "val")])
    per_view = {v: torch.cat(both[2 * i:2 * i + 2]) for i, v in enumerate(wanted)}
    found = learning_curve.curve([per_view[v] for v in views], [per_view[v] for v in scored],
                                 torch.cat([labels["train"], labels["val"]]).numpy(), n_classes, copies,
                                 l2=solved.fit.l2, seed=params.seed, class_weights=weights,
                                 label_smoothing=params.label_smoothing)
    seconds = time.perf_counter() - started
    say(f"learning curve ({found['folds']} folds x {len(found['fractions'])} subset sizes, head at "
        f"l2 {solved.fit.l2:.3g}): accuracy {', '.join(f'{v:.3f}' for v in found['accuracy'])} "
        f"[{seconds:.1f} s]")
    return {**found, "seconds": seconds}
