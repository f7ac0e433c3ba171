"""Does tuning the top of the frozen backbone beat the solved linear head: the study behind the
"Top tuning" section of docs/studies.md (issue #31).

    python -m bench.top_tuning_study --data /path/to/ImageFolder --out /tmp/top-trash

tf_efficientnet_lite2 @ 260 px, built as train builds it (build_model, bundled weights), each
image through predict's geometry (folderfit.images.decode.network_image: the stored copy, resize
+ centre crop) and its mirror. The trunk (conv_stem .. blocks[-2]) runs ONCE per image and view,
in ONNX Runtime (folderfit.compute.cpu_engine.export_backbone, checked against torch), and its
output (the input of blocks[-1], 208 x 9 x 9) is kept in fp16 in memory (and in --out/acts.pt).

Both arms use the same 5 folds (folderfit.frozen.crossfit.assign_folds, copies grouped):
  probe: crossfit.cross_fit on the pooled features (clean + mirror rows, l2 chosen once on fold 1,
         the head refitted on the other folds, the fold scored by the mean of its two views);
  tuned: per fold, an inner validation split of the training folds (1/7, copies grouped; the
         scored fold plays no part); the classifier starts from the solved head (crossfit's l2)
         fitted on the inner-train rows; BN in eval mode; AdamW on the top (conv_head + bn2,
         optionally blocks[-1]) and the classifier; one random view per image per epoch; the
         epoch with the lowest inner-val loss (epoch 0: the warm start) is kept (patience
         --patience); the fold scored by the mean probability of clean + mirror.
The probe's pooled features come from the same fp16 activations through the untuned top in
torch (the pipeline's come from ONNX Runtime fp32 end to end). Prints (and writes --out/table.md,
--out/results.json) out-of-fold accuracy per arm, of the warm start alone (the solved head on
the inner-train rows: what the tuned arm starts from, a little less data than the probe's), the paired
difference with a paired bootstrap 95% interval, seconds per epoch and in total. Every setting
tried is reported: choosing the best of them on these same folds flatters it.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
MODEL = "tf_efficientnet_lite2"
SIZE = 260
# name -> (tune blocks[-1] too, lr of the top, lr of the classifier)
SETTINGS = {
    "conv_head lr1e-4": (False, 1e-4, 1e-3),
    "conv_head lr3e-4": (False, 3e-4, 1e-3),
    "block+conv_head lr1e-4": (True, 1e-4, 1e-3),
}


def image_list(data: Path):
    from folderfit.images import image_folder

    classes, _ = image_folder.read_image_folder(data)
    names = sorted(c for c, found in classes.items() if found)
    files, labels = [], []
    for k, c in enumerate(names):
        for f in sorted(classes[c], key=lambda f: f.rel):
            files.append(f.path)
            labels.append(k)
    return names, files, np.array(labels)


def trunk_activations(built, files, batch: int = 16) -> torch.Tensor:
    """[N, 2 views (clean, mirror), C, H, W] fp16: the input of blocks[-1]."""
    from folderfit.compute import cpu_engine
    from folderfit.images import datasets, decode

    m = built.model.eval()
    trunk = nn.Sequential(m.conv_stem, m.bn1, *m.blocks[:-1]).eval()
    engine = cpu_engine.export_backbone(trunk, SIZE, batch)
    norm = datasets.Normalizer(built.preprocess.mean, built.preprocess.std)
    out = []
    for start in range(0, len(files), batch):
        images = torch.stack([decode.network_image(f, built.preprocess) for f in files[start:start + batch]])
        both = torch.cat([images, images.flip(-1)])
        n = len(both)
        x = norm(both)
        chunks = []
        for s in range(0, n, batch):
            part = x[s:s + batch]
            pad = batch - len(part)
            if pad:
                part = torch.cat([part, part[:1].expand(pad, -1, -1, -1)])
            chunks.append(engine(part)[:batch - pad].half())
        a = torch.cat(chunks)
        k = len(images)
        out.append(torch.stack([a[:k], a[k:]], 1))
    return torch.cat(out)


class Top(nn.Module):
    def __init__(self, model, with_block: bool):
        super().__init__()
        self.block = copy.deepcopy(model.blocks[-1]) if with_block else None
        self.conv_head = copy.deepcopy(model.conv_head)
        self.bn2 = copy.deepcopy(model.bn2)
        self.classifier = nn.Linear(model.conv_head.out_channels, model.classifier.out_features)
        self.eval()  # BN running stats stay frozen, whatever mode `model` was in

    def pooled(self, x):
        if self.block is not None:
            x = self.block(x)
        return self.bn2(self.conv_head(x)).mean((2, 3))

    def forward(self, x):
        return self.classifier(self.pooled(x))


def run_in_batches(fn, x, batch=64):
    with torch.no_grad():
        return torch.cat([fn(x[s:s + batch].float()) for s in range(0, len(x), batch)])


def train_fold(top: Top, acts, labels, inner, held, lr_top, lr_cls, epochs, patience, seed, batch, wd):
    """Tune `top` on rows `inner` (one random view each per epoch), keep the epoch with the lowest
    loss on `held` (mean of both views). Returns (seconds per epoch list, best epoch)."""
    top.eval()  # BN running stats frozen, no dropout
    tuned = [p for n, p in top.named_parameters() if not n.startswith("classifier")]
    opt = torch.optim.AdamW([{"params": tuned, "lr": lr_top, "weight_decay": wd},
                             {"params": top.classifier.parameters(), "lr": lr_cls, "weight_decay": wd}])
    g = torch.Generator().manual_seed(seed)
    y = torch.from_numpy(labels)

    def held_loss():
        logits = [run_in_batches(top, acts[held, v]) for v in range(acts.shape[1])]
        probs = torch.stack([torch.softmax(z, 1) for z in logits]).mean(0)
        return float(nn.functional.nll_loss(probs.clamp_min(1e-12).log(), y[held]))

    best, best_state, best_epoch, times = held_loss(), copy.deepcopy(top.state_dict()), 0, []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        order = torch.from_numpy(inner)[torch.randperm(len(inner), generator=g)]
        views = torch.randint(0, acts.shape[1], (len(order),), generator=g)
        for s in range(0, len(order), batch):
            rows, v = order[s:s + batch], views[s:s + batch]
            loss = nn.functional.cross_entropy(top(acts[rows, v].float()), y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - started)
        now = held_loss()
        if now < best:
            best, best_state, best_epoch = now, copy.deepcopy(top.state_dict()), epoch
        elif epoch - best_epoch >= patience:
            break
    top.load_state_dict(best_state)
    return times, best_epoch


def paired_bootstrap(diff: np.ndarray, resamples: int, seed: int):
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--bootstrap", type=int, default=5000)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="subset of: " + ", ".join(SETTINGS))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    args.out.mkdir(parents=True, exist_ok=True)

    from folderfit.backbone.architecture import build_model
    from folderfit.compute.runtime import seed_everything
    from folderfit.frozen import crossfit, head
    from folderfit.support.fileio import sha256_file
    from folderfit.support.report import say

    seed_everything(args.seed)
    names, files, labels = image_list(args.data)
    groups = np.array([sha256_file(f) for f in files])
    built = build_model(MODEL, len(names), "default", args.seed)
    built.model.eval()
    say(f"{args.data}: {len(files)} images, {len(names)} classes")
    acts_file = args.out / "acts.pt"
    started = time.perf_counter()
    if acts_file.exists():
        acts, extract_s = torch.load(acts_file), json.loads((args.out / "extract.json").read_text())["s"]
    else:
        acts = trunk_activations(built, files)
        extract_s = time.perf_counter() - started
        torch.save(acts, acts_file)
        (args.out / "extract.json").write_text(json.dumps({"s": extract_s}))
    say(f"trunk activations {tuple(acts.shape)} in {extract_s:.0f} s")

    base = Top(built.model, with_block=True).eval()
    after_block = torch.stack([run_in_batches(base.block, acts[:, v]).half() for v in range(2)], 1)
    pooled = [run_in_batches(base.pooled, acts[:, v]) for v in range(2)]
    fit = crossfit.cross_fit(pooled, labels, len(names), groups, args.folds, args.seed)
    fold, l2 = fit.fold, fit.l2[0]
    probe_ok = fit.probs.argmax(1) == labels
    say(f"probe: {probe_ok.mean():.4f} (l2 {l2})")

    results = {"probe": {"accuracy": float(probe_ok.mean()), "l2": l2}}
    rows = []
    for name in [s for s in args.settings.split(",") if s]:
        with_block, lr_top, lr_cls = SETTINGS[name]
        x = acts if with_block else after_block
        probs, warm = np.zeros_like(fit.probs), np.zeros_like(fit.probs)
        epoch_s, best_epochs, t0 = [], [], time.perf_counter()
        for f in range(int(fold.max()) + 1):
            train = np.flatnonzero(fold != f)
            inner_fold = crossfit.assign_folds(labels[train], groups[train], 7, args.seed + f)
            inner, held = train[inner_fold != 0], train[inner_fold == 0]
            top = Top(built.model, with_block)
            if not with_block:
                top.block = None
            rows_x = torch.cat([pooled[v][inner] for v in range(2)])
            rows_y = torch.from_numpy(labels[inner]).repeat(2)
            w, b = head.refit(rows_x, rows_y, len(names), l2)
            with torch.no_grad():
                top.classifier.weight.copy_(w)
                top.classifier.bias.copy_(b)
            scored = np.flatnonzero(fold == f)
            p = torch.stack([torch.softmax(run_in_batches(top, x[scored, v]), 1) for v in range(2)]).mean(0)
            warm[scored] = p.double().numpy()
            times, best_epoch = train_fold(top, x, labels, inner, held, lr_top, lr_cls, args.epochs,
                                           args.patience, args.seed + f, args.batch, args.weight_decay)
            epoch_s += times
            best_epochs.append(best_epoch)
            p = torch.stack([torch.softmax(run_in_batches(top, x[scored, v]), 1) for v in range(2)]).mean(0)
            probs[scored] = p.double().numpy()
        total = time.perf_counter() - t0
        ok = probs.argmax(1) == labels
        warm_acc = float((warm.argmax(1) == labels).mean())
        diff = ok.astype(float) - probe_ok.astype(float)
        low, high = paired_bootstrap(diff, args.bootstrap, args.seed)
        results[name] = {"accuracy": float(ok.mean()), "warm_start_accuracy": warm_acc, "diff": [float(diff.mean()), low, high],
                         "s_per_epoch": float(np.mean(epoch_s)), "epochs": len(epoch_s),
                         "best_epochs": best_epochs, "total_s": total}
        line = (f"| {name} | {probe_ok.mean():.3f} | {warm_acc:.3f} | {ok.mean():.3f} | {diff.mean():+.3f} [{low:+.3f}, {high:+.3f}] "
                f"| {np.mean(epoch_s):.1f} | {total:.0f} | {best_epochs} |")
        say(line)
        rows.append(line)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    table = "\n".join([
        f"{args.data.name}: {len(files)} images, {len(names)} classes, {args.folds}-fold out-of-fold, "
        f"seed {args.seed}, trunk extraction {extract_s:.0f} s",
        "", "| setting | probe acc | warm start acc | tuned acc | tuned - probe [paired bootstrap 95%] | s/epoch | total s | best epoch per fold |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows])
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    results.update(images=len(files), classes=names, folds=args.folds, seed=args.seed, extract_s=extract_s)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
