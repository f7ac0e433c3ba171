"""The results page: metrics/eval/index.html, written from metrics/eval/'s files.

Reads (extra columns and keys are ignored): summary.json (headline numbers, their 95%
intervals, the scored split and, when present, `estimate`: test | cv | val),
per_class.json, predictions.csv (path, prepared_file, true, predicted, confidence, ...).
Shows: the headline numbers with intervals and WHICH estimate they are; the confusion matrix,
where a click on a cell shows the photos in it; the mistakes, most confident first; the
per-class table; calibration (reliability bins recomputed from predictions.csv with the
evaluation's binning: equal-width, right-closed, `ece_bins` bins); and the run's facts
(backbone, strategy, changed params, data version) passed in by the caller.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from folderfit.artifacts import backbone_candidates, learning_curve_record
from folderfit.artifacts.manifest import image_path
from folderfit.paths import TRAIN_DIR
from folderfit.results.pages import thumbs as page_thumbs
from folderfit.results.pages.html import (
    esc,
    json_script,
    page,
    read_csv,
    read_json,
    read_manifest,
    to_float,
)
from folderfit.support.fileio import write_text

ESTIMATES = {
    "test": "held-out test split: no image of it was used for training or model choice",
    "cv": "cross-validation of the whole procedure (selection nested in the folds): no test split",
    "val": "validation split, which also chose the model: optimistic",
}
HEADLINE = (("accuracy", "accuracy"), ("macro_f1", "macro F1"),
            ("balanced_accuracy", "balanced accuracy"), ("top_k_accuracy", "top-k accuracy"),
            ("roc_auc_ovr_macro", "ROC-AUC (one-vs-rest, macro)"), ("ece", "calibration error (ECE)"))


def estimate_of(summary: dict) -> str:
    """test | cv | val: from the `estimate` key when the evaluation wrote one (a keyword or a
    sentence such as "the test split, scored with the model file"), else from the split."""
    kind = str(summary.get("estimate") or "").lower()
    if kind in ESTIMATES:
        return kind
    if "cross" in kind or kind.startswith("cv") or " cv" in kind or "fold" in kind:
        return "cv"
    for word in ("test", "val"):
        if word in kind:
            return word
    if summary.get("selection_split_scored") or summary.get("split") == "val":
        return "val"
    return "test" if summary.get("split", "test") == "test" else "cv"


def reliability(confidence: list[float], correct: list[bool], n_bins: int) -> list[dict]:
    """Equal-width, right-closed confidence bins (folderfit.results.metrics.reliability_bins' rule)."""
    count, conf, hit = [0] * n_bins, [0.0] * n_bins, [0] * n_bins
    for c, ok in zip(confidence, correct):
        b = min(max(math.ceil(c * n_bins) - 1, 0), n_bins - 1)
        count[b] += 1
        conf[b] += c
        hit[b] += int(ok)
    return [{"low": b / n_bins, "high": (b + 1) / n_bins, "count": count[b],
             "confidence": conf[b] / count[b] if count[b] else None,
             "accuracy": hit[b] / count[b] if count[b] else None} for b in range(n_bins)]


def _image_file(row: dict, by_source: dict, prepared_dir: Path) -> Path | None:
    """The image file of a prediction (the original, which the page shows as a thumbnail): via
    the manifest, else the row's prepared_file."""
    m = by_source.get(row.get("path", ""))
    if m:
        return image_path(prepared_dir, m)
    given = row.get("prepared_file") or ""
    if given:
        p = Path(given)
        if p.is_file() or p.is_absolute():
            return p
        return prepared_dir.parent.parent / p  # relative to the project that holds data/prepared
    return None


def collect(eval_dir: Path, prepared_dir: Path, *, facts: dict | None = None,
            thumbnails: bool = True) -> dict:
    eval_dir, prepared_dir = Path(eval_dir), Path(prepared_dir)
    summary = read_json(eval_dir / "summary.json")
    per_class = read_json(eval_dir / "per_class.json", default={})
    preds = read_csv(eval_dir / "predictions.csv", ("path", "true", "predicted", "confidence"))
    try:
        by_source = {r["source"]: r for r in read_manifest(prepared_dir)}
    except Exception:  # the page still shows numbers without images
        by_source = {}
    classes = list(per_class) if isinstance(per_class, dict) and per_class else []
    for r in preds:
        for c in (r["true"], r["predicted"]):
            if c not in classes:
                classes.append(c)
    idx = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    items = []
    for r in preds:
        t, p = idx[r["true"]], idx[r["predicted"]]
        matrix[t][p] += 1
        items.append({"path": r["path"], "t": t, "p": p,
                      "conf": to_float(r["confidence"], 0.0), "top": r.get("top_k", "")})
    files = [_image_file(r, by_source, prepared_dir) for r in preds]
    wanted = [f for f in files if f is not None]
    it = iter(page_thumbs.data_uris(wanted) if thumbnails else [None] * len(wanted))
    thumbs = [next(it) if f is not None else None for f in files]
    n_bins = int(summary.get("ece_bins") or 15)
    bins = reliability([i["conf"] for i in items], [i["t"] == i["p"] for i in items], n_bins)
    return {"summary": summary, "estimate": estimate_of(summary), "classes": classes,
            "matrix": matrix, "items": items, "thumbs": thumbs, "per_class": per_class,
            "bins": bins, "facts": facts or {},
            "decisions": read_json(eval_dir / "decisions.json", default={}) or None,
            "coverage": read_json(eval_dir / "coverage.json", default={}).get("coverage", [])}


def _num(x, pct: bool = False) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "n/a"
    return f"{x:.1%}" if pct else f"{x:.4f}"


def _headline(summary: dict) -> str:
    out = []
    for key, label in HEADLINE:
        if key not in summary:
            continue
        low, high = summary.get(f"{key}_ci95_low"), summary.get(f"{key}_ci95_high")
        ci = (f'<span class="muted">95% CI {_num(low)} \u2013 {_num(high)}</span>'
              if low is not None and high is not None else "")
        name = label.replace("top-k", f"top-{summary.get('top_k', 'k')}")
        out.append(f'<div class="stat" data-key="{esc(key)}"><b>{_num(summary[key])}</b>'
                   f'{esc(name)}<br>{ci}</div>')
    return "".join(out)


def _interval_note(s: dict) -> str:
    """How the 95% intervals were made: `<name>_ci_method` keys, else the bootstrap."""
    boot = (f"bootstrap over the scored images ({s['bootstrap_resamples']} resamples)"
            if "bootstrap_resamples" in s else "bootstrap over the scored images")
    named = [f"{k.removesuffix('_ci_method').replace('_', ' ')}: {v}" for k, v in s.items()
             if k.endswith("_ci_method") and isinstance(v, str)]
    return "95% intervals: " + "; ".join(named + [f"others: {boot}" if named else boot]) + "."


def _scored_note(s: dict) -> str:
    """A short sentence on what the scored images leave out: copies of images the model learned
    from (`copies_of_learned_excluded`), test photos data/corrections.csv dropped or relabelled."""
    notes = []
    n = s.get("copies_of_learned_excluded") or 0
    if n:
        notes.append(f"{n} {'copy' if n == 1 else 'copies'} (same pixels) of images the model "
                     f"learned from are not scored: with them, accuracy would read "
                     f"{_num(s.get('accuracy_with_copies'))} on {s.get('n_images_with_copies', '?')} images.")
    dropped = s.get("test_dropped_by_corrections") or 0
    relabelled = s.get("test_relabelled_by_corrections") or 0
    if dropped:
        notes.append(f"data/corrections.csv dropped {dropped} test photo(s)"
                     + (f" and relabelled {relabelled}" if relabelled else "")
                     + f": these scores are on {dropped} fewer test photos than a run without it.")
    elif relabelled:
        notes.append(f"data/corrections.csv relabelled {relabelled} test photo(s): the same "
                     f"photos, scored against the new labels.")
    return (f'<p id="scored-note" class="muted">{esc(" ".join(notes))}</p>' if notes else "")


def _confusion(classes: list, matrix: list) -> str:
    if not classes:
        return '<p class="muted">no predictions</p>'
    top = max(1, max(max(r) for r in matrix))
    head = "".join(f'<th>{esc(c)}</th>' for c in classes)
    rows = []
    for t, name in enumerate(classes):
        total = max(1, sum(matrix[t]))
        cells = []
        for p, n in enumerate(matrix[t]):
            shade = 0.08 + 0.8 * n / top if n else 0
            color = "36,87,197" if t == p else "179,38,30"
            fg = "#fff" if shade > 0.5 else "inherit"
            cells.append(f'<td class="cell" data-t="{t}" data-p="{p}" title="{n} of {total} '
                         f'{esc(name)} images predicted {esc(classes[p])}" style="background:'
                         f'rgba({color},{shade:.2f});color:{fg}">{n}</td>')
        rows.append(f'<tr><th class="l">{esc(name)}</th>{"".join(cells)}<td>{sum(matrix[t])}</td></tr>')
    return (f'<table class="cm" id="cm"><tr><th class="l">true \\ predicted</th>{head}<th>n</th></tr>'
            f'{"".join(rows)}</table>')


def _per_class(per_class: dict) -> str:
    if not isinstance(per_class, dict) or not per_class:
        return ""
    keys = [k for k in ("precision", "recall", "recall_ci95", "f1", "support", "photos", "roc_auc",
                        "average_precision", "note")
            if any(isinstance(v, dict) and k in v for v in per_class.values())]
    head = "".join(f"<th>{esc(k.replace('_ci95', ' 95% interval').replace('_', ' '))}</th>" for k in keys)

    def cell(row: dict, k: str) -> str:
        value = row.get(k)
        if k in ("support", "photos"):
            return esc(value)
        if k == "note":
            return f'<span class="l">{esc(value or "")}</span>'
        if k == "recall_ci95" and isinstance(value, list) and len(value) == 2:
            return f"{_num(value[0])}-{_num(value[1])}"
        return _num(value)
    rows = "".join(
        f'<tr><td class="l">{esc(name)}</td>' + "".join(f"<td>{cell(row, k)}</td>" for k in keys)
        + "</tr>" for name, row in per_class.items() if isinstance(row, dict))
    return f'<table id="per-class"><tr><th class="l">class</th>{head}</tr>{rows}</table>'


def _calibration(bins: list, ece) -> str:
    """Reliability diagram as inline SVG: accuracy per confidence bin against the diagonal."""
    w, h, pad = 320, 240, 30
    x = lambda v: pad + v * (w - 2 * pad)
    y = lambda v: h - pad - v * (h - 2 * pad)
    bars = []
    for b in bins:
        if b["count"]:
            bars.append(f'<rect x="{x(b["low"]) + 1:.1f}" y="{y(b["accuracy"]):.1f}" '
                        f'width="{x(b["high"]) - x(b["low"]) - 2:.1f}" height="{y(0) - y(b["accuracy"]):.1f}" '
                        f'fill="#2457c5" opacity="0.8"><title>{b["low"]:.2f}-{b["high"]:.2f}: '
                        f'{b["count"]} images, accuracy {b["accuracy"]:.3f}, mean confidence '
                        f'{b["confidence"]:.3f}</title></rect>')
    ticks = "".join(f'<text x="{x(v):.0f}" y="{h - pad + 14}" font-size="10" text-anchor="middle">{v:g}</text>'
                    f'<text x="{pad - 4}" y="{y(v) + 3:.0f}" font-size="10" text-anchor="end">{v:g}</text>'
                    for v in (0, 0.5, 1))
    svg = (f'<svg id="reliability" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
           f'aria-label="reliability diagram"><rect x="{pad}" y="{pad}" width="{w - 2 * pad}" '
           f'height="{h - 2 * pad}" fill="#fff" stroke="#dde1e7"/>{"".join(bars)}'
           f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#b3261e" stroke-dasharray="4 3"/>'
           f'{ticks}<text x="{w / 2}" y="{h - 4}" font-size="11" text-anchor="middle">confidence</text>'
           f'<text x="10" y="{h / 2}" font-size="11" transform="rotate(-90 10 {h / 2})" '
           f'text-anchor="middle">accuracy</text></svg>')
    rows = "".join(f'<tr><td>{b["low"]:.2f}\u2013{b["high"]:.2f}</td><td>{b["count"]}</td>'
                   f'<td>{_num(b["confidence"])}</td><td>{_num(b["accuracy"])}</td></tr>'
                   for b in bins if b["count"])
    return (f'<div class="bar" style="align-items:flex-start">{svg}<table><tr><th>confidence</th>'
            f'<th>images</th><th>mean confidence</th><th>accuracy</th></tr>{rows}</table></div>'
            f'<p class="muted">ECE {_num(ece)}: bars under the dashed line = over-confident.</p>')


def _decisions(d, curve: list) -> str:
    """The model file's decision rules on the split: accepted share and accuracy, the
    unfamiliar rate, and the accuracy-vs-coverage curve as a small table."""
    if not isinstance(d, dict):
        return '<p class="muted">the model file has no decision rules: every photo gets a class</p>'
    rows = [("target accuracy", _num(d.get("target_accuracy"))),
            ("confidence threshold", _num(d.get("confidence_threshold"))),
            ("accepted", f'{esc(d.get("n_accepted"))} of {esc(d.get("n_images"))} ({_num(d.get("accepted_fraction"), True)})'),
            ("accuracy of accepted", f'{_num(d.get("accepted_accuracy"))} (95% CI {_num(d.get("accepted_accuracy_ci95_low"))}'
                                     f'\u2013{_num(d.get("accepted_accuracy_ci95_high"))})'),
            ("unfamiliar", _num(d.get("unfamiliar_rate"), True)),
            ("chosen on", esc(d.get("calibrated_on")))]
    sets = d.get("sets") or {}
    if sets.get("coverage") is not None:
        rows.append((f'prediction sets ({esc(sets.get("level"))})',
                     f'cover {_num(sets.get("coverage"), True)}, mean size {_num(sets.get("mean_size"))}'))
    table = '<table class="kv" id="decisions">' + "".join(
        f'<tr><th class="l">{esc(k)}</th><td>{v}</td></tr>' for k, v in rows) + "</table>"
    step = max(1, len(curve) // 10)
    points = [p for p in curve[::step] if isinstance(p, dict)]
    curve_rows = "".join(f'<tr><td>{_num(p.get("coverage"), True)}</td><td>{_num(p.get("accuracy"))}</td>'
                         f'<td>{_num(p.get("threshold"))}</td></tr>' for p in points)
    note = " In-sample: the thresholds were chosen on these scores." if d.get("in_sample") else ""
    return (f'<div class="bar" style="align-items:flex-start">{table}<table id="coverage"><tr>'
            f'<th>kept (most confident)</th><th>accuracy</th><th>threshold</th></tr>{curve_rows}</table></div>'
            f'<p class="muted">Below the threshold the model says <i>unsure</i>; photos unlike any it '
            f'learned from are <i>unfamiliar</i>.{note}</p>')


def _facts(facts: dict) -> str:
    if not facts:
        return '<p class="muted">no run facts given</p>'
    cell = lambda v: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return '<table class="kv" id="facts">' + "".join(
        f'<tr><th class="l">{esc(k)}</th><td>{esc(cell(v))}</td></tr>' for k, v in facts.items()) + "</table>"


def render(data: dict) -> str:
    s, kind = data["summary"], data["estimate"]
    n = s.get("n_images", len(data["items"]))
    n_wrong = sum(i["t"] != i["p"] for i in data["items"])
    said = s.get("estimate")
    said = f" ({said})" if isinstance(said, str) and len(said) > 4 else ""  # the evaluation's own words
    header = (f'<h1>folderfit results</h1><div class="bar"><span id="estimate" data-kind="{kind}">'
              f'<b>{esc({"test": "test split", "cv": "cross-validation", "val": "val split"}[kind])}</b>'
              f' \u00b7 {esc(n)} images \u00b7 {esc(ESTIMATES[kind] + said)}</span></div>'
              f'{_scored_note(s)}')
    body = (
        f'<section><div class="stats">{_headline(s)}</div>'
        f'<p class="muted">{esc(_interval_note(s))}</p></section>'
        f'<section><h2>Run facts</h2>{_facts(data["facts"])}</section>'
        f'<section><h2>Confusion matrix</h2><p class="muted">Rows: true class; columns: predicted. '
        f'Click a cell to see its photos.</p>{_confusion(data["classes"], data["matrix"])}'
        f'<h2 id="cell-title" class="hidden"></h2><div class="grid" id="cell"></div></section>'
        f'<section><h2>Mistakes ({n_wrong}), most confident first</h2><div class="grid" id="mistakes"></div></section>'
        f'<section><h2>Per class</h2>{_per_class(data["per_class"])}</section>'
        f'<section><h2>Calibration</h2>{_calibration(data["bins"], s.get("ece"))}</section>'
        f'{_more_photos(data.get("learning_curve"))}'
        f'{_backbones(data.get("backbones"))}'
        f'<section><h2>When it abstains</h2>{_decisions(data.get("decisions"), data.get("coverage") or [])}</section>')
    return page("folderfit results", header, body, json_script("data", data), SCRIPT)


def write(eval_dir: Path, prepared_dir: Path, out: Path, *, facts: dict,
          train_dir: Path | None = TRAIN_DIR) -> Path:
    """Write the results page `out` (e.g. metrics/eval/index.html) from evaluate's files in
    `eval_dir`, images via prepare's manifest in `prepared_dir`; `facts` (backbone, strategy,
    changed params, data version, ...) are shown as given; train's learning curve from
    `train_dir` when it wrote one (None: not shown). Atomic."""
    data = collect(eval_dir, prepared_dir, facts=facts)
    data["learning_curve"] = learning_curve_record.read_learning_curve(train_dir) if train_dir else None
    data["backbones"] = backbone_candidates.read_candidates(train_dir) if train_dir else None
    write_text(out, render(data))
    return Path(out)


SCRIPT = r"""
'use strict';
const D = JSON.parse(document.getElementById('data').textContent);
const $ = id => document.getElementById(id);
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; }
const lazy = 'IntersectionObserver' in window ? new IntersectionObserver(entries => {
  for (const e of entries) if (e.isIntersecting) { load(e.target); lazy.unobserve(e.target); }
}, {rootMargin: '600px'}) : null;
function load(img) { const t = D.thumbs[+img.dataset.img]; if (t) img.src = t; else img.alt = 'no image'; }
function tile(i) {
  const it = D.items[i], c = el('div', 'card'); c.dataset.path = it.path;
  const img = el('img', 'thumb'); img.loading = 'lazy'; img.alt = it.path; img.dataset.img = i;
  img.width = 112; img.height = 112; if (lazy) lazy.observe(img); else load(img);
  const ok = it.t === it.p;
  c.append(img, el('div', 'label', D.classes[it.t] + (ok ? ' \u2713' : ' \u2192 ' + D.classes[it.p])),
           el('div', '', 'confidence ' + it.conf.toFixed(3)));
  if (it.top) c.append(el('div', 'muted', it.top.split(';').join(' \u00b7 ')));
  const p = el('div', 'path', it.path); p.title = it.path; c.append(p);
  return c;
}
const byConf = (a, b) => D.items[b].conf - D.items[a].conf || a - b;
// galleries are built PAGE tiles at a time as the reader scrolls: thousands stay responsive
const PAGE = 500, galleries = new Map();
const more = 'IntersectionObserver' in window ? new IntersectionObserver(entries => {
  for (const e of entries) if (e.isIntersecting) grow(galleries.get(e.target));
}, {rootMargin: '1200px'}) : null;
function grow(g) {
  if (!g || g.shown >= g.list.length) return;
  const end = Math.min(g.list.length, g.shown + (more ? PAGE : g.list.length)), frag = document.createDocumentFragment();
  for (let i = g.shown; i < end; i++) frag.append(tile(g.list[i]));
  g.box.append(frag); g.shown = end;
  g.more.textContent = end < g.list.length ? 'showing ' + end + ' of ' + g.list.length + ': scroll for more' : '';
  if (more && end < g.list.length) { more.unobserve(g.more); more.observe(g.more); }
}
function fill(box, list) {
  let g = [...galleries.values()].find(x => x.box === box);
  if (!g) { g = {box, more: el('div', 'muted')}; box.after(g.more); galleries.set(g.more, g); if (more) more.observe(g.more); }
  g.list = list; g.shown = 0; box.replaceChildren(); grow(g);
  if (!list.length) g.more.textContent = 'none';
}
fill($('mistakes'), D.items.map((_, i) => i).filter(i => D.items[i].t !== D.items[i].p).sort(byConf));
for (const td of document.querySelectorAll('#cm td.cell')) td.onclick = () => {
  for (const s of document.querySelectorAll('#cm td.sel')) s.classList.remove('sel');
  td.classList.add('sel');
  const t = +td.dataset.t, p = +td.dataset.p;
  const list = D.items.map((_, i) => i).filter(i => D.items[i].t === t && D.items[i].p === p).sort(byConf);
  const title = $('cell-title'); title.classList.remove('hidden');
  title.textContent = 'true ' + D.classes[t] + ', predicted ' + D.classes[p] + ': ' + list.length + ' photo' + (list.length === 1 ? '' : 's');
  fill($('cell'), list);
};
document.body.dataset.ready = '1';
"""


def _backbones(record: dict | None) -> str:
    """"Backbone": the candidates train's choice tried (folderfit.frozen.backbone_choice), when
    it made one."""
    if not record:
        return ""

    def interval(row: dict, key: str, signed: bool = False) -> str:
        value, ci = row.get(key), row.get(f"{key}_ci")
        if not isinstance(value, (int, float)) or not isinstance(ci, list) or len(ci) != 2:
            return ""
        fmt = "{:+.3f}" if signed else "{:.3f}"
        return f"{fmt.format(value)} ({fmt.format(ci[0])} to {fmt.format(ci[1])})"

    rows = "".join(
        f'<tr data-status="{esc(r.get("status", ""))}"><td class="l">{esc(r.get("model_name", ""))}</td>'
        f'<td>{esc(r.get("image_size", ""))}</td><td>{esc(interval(r, "accuracy"))}</td>'
        f'<td>{esc(interval(r, "difference", True))}</td>'
        f'<td class="l">{esc(r.get("status", ""))}{esc(": " + r["reason"] if r.get("reason") else "")}</td></tr>'
        for r in record["candidates"] if isinstance(r, dict))
    nested = record.get("nested") or {}
    return (f'<section><h2>Backbone</h2><p class="muted">Out-of-fold accuracy of each candidate on '
            f'{esc(record.get("images", "?"))} train + val photos{" (a sample)" if record.get("sampled") else ""}, '
            f'same folds for all; {esc(record.get("requested", "model_name"))} is kept unless another\'s '
            f'paired 95% interval of the difference lies above 0. Choosing then delivering, scored '
            f'out of fold with the choice nested: {esc(interval(nested, "accuracy"))}.</p>'
            f'<table id="backbones"><tr><th class="l">backbone</th><th>px</th><th>accuracy (95%)</th>'
            f'<th>difference (95%)</th><th class="l"></th></tr>{rows}</table></section>')


def _more_photos(record: dict | None) -> str:
    """"More photos?": train's learning curve per class (folderfit.frozen.learning_curve), when
    train wrote one."""
    if not record:
        return ""
    if "skipped" in record:
        return (f'<section><h2>More photos?</h2><p id="more-photos" class="muted">'
                f'learning curve not computed: {esc(record["skipped"])}</p></section>')
    rows = []
    for name, row in record.get("classes", {}).items():
        points = " \u00b7 ".join(f"{_num(a)} at {n:.0f}" for n, a in zip(row.get("photos", []), row.get("accuracy", []))
                             if isinstance(n, (int, float)) and isinstance(a, (int, float)))
        noise = row.get("standard_error")
        noise = f" (\u00b1{noise:.2f})" if isinstance(noise, (int, float)) else ""
        rows.append(f'<tr data-verdict="{esc(row.get("verdict", ""))}"><td class="l">{esc(name)}</td>'
                    f'<td>{esc(row.get("photos_now", ""))}</td><td class="l">{esc(points + noise)}</td>'
                    f'<td class="l">{esc(row.get("statement", ""))}</td></tr>')
    return (f'<section><h2>More photos?</h2><p class="muted">Out-of-fold recall of the head refitted on '
            f'{"/".join(f"{f:.0%}" for f in record.get("fractions", []))} of each class\'s photos '
            f'({esc(record.get("folds", "?"))} folds), and what a curve fitted to it says one doubling '
            f'would add. A class\'s recall on few photos moves by a few points by chance (\u00b1 one '
            f'standard error below): read a forecast as a direction, not a number.</p><table id="more-photos"><tr><th class="l">class'
            f'</th><th>photos now</th><th class="l">recall at photos</th><th class="l">more photos?</th></tr>'
            f'{"".join(rows)}</table></section>')
