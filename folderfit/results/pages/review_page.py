"""The label-review page: metrics/review/index.html, written from metrics/review/'s files.

What it shows, from the review stage's outputs (extra columns and keys are ignored):
  label_issues.csv      every flagged image, in the file's order (most suspect first), as a
                        thumbnail with given -> suggested class and score
  near_duplicates.csv   the pairs side by side, cross-class and cross-split pairs first
  outliers.csv          the outliers
  noise_per_class.json  estimated label noise per class (details.json adds the counts)
Images are found through prepare's manifest (data/prepared/manifest.csv: source path ->
prepared file, split, class).

Every image has Keep / Drop / Relabel-to controls; the page exports the decisions as
data/corrections.csv rows (folderfit.artifacts.corrections' format, CSV-quoted). A TEST image never
gets the one-click "Relabel -> suggested" button: relabelling test photos to what a model
suggests would raise the test score by construction, so it says "test image: decide by
looking" and offers Keep / Drop / a class picked by the person (as the review's template
leaves test images out).

Opened from disk the page is read-only apart from the export; served by
`folderfit review --serve` (folderfit.commands.review_server) each decision is saved to
data/corrections.csv at once.
"""

from __future__ import annotations

from pathlib import Path

from folderfit.artifacts.manifest import image_path
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

TEST = "test"
PAIR_RANK = ("different classes and splits", "different classes", "different splits")
# the page's mode flag; the server swaps the first for the second (serve.py)
MODE_FILE = json_script("mode", {"serve": False})
MODE_SERVE = json_script("mode", {"serve": True})


def collect(review_dir: Path, prepared_dir: Path, *, thumbnails: bool = True) -> dict:
    """Everything the page shows, as plain data (JSON-able, deterministic)."""
    review_dir, prepared_dir = Path(review_dir), Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    by_source = {r["source"]: r for r in manifest}
    classes = sorted({r["class"] for r in manifest})
    issues = read_csv(review_dir / "label_issues.csv", ("path", "given", "suggested", "score"))
    pairs = read_csv(review_dir / "near_duplicates.csv", ("path", "other"), optional=True)
    outliers = read_csv(review_dir / "outliers.csv", ("path",), optional=True)
    details = read_json(review_dir / "details.json", default={})
    noise = read_json(review_dir / "noise_per_class.json", default=[])

    images: list[dict] = []
    index: dict[str, int] = {}

    def image(path: str, fallback_class: str = "", fallback_split: str = "") -> int:
        if path not in index:
            row = by_source.get(path)
            index[path] = len(images)
            images.append({"path": path,
                           "class": row["class"] if row else fallback_class,
                           "split": row["split"] if row else (fallback_split or "?"),
                           "file": str(image_path(prepared_dir, row)) if row else None})
        return index[path]

    issue_items = [{"img": image(r["path"], r["given"]), "given": r["given"],
                    "suggested": r["suggested"], "score": to_float(r["score"])} for r in issues]
    # cross-class and cross-split first; the stage's order is kept within each kind
    ranked = sorted(enumerate(pairs), key=lambda e: (_pair_rank(e[1].get("issue", "")), e[0]))
    pair_items = [{"a": image(p["path"], p.get("class", ""), p.get("split", "")),
                   "b": image(p["other"], p.get("other_class", ""), p.get("other_split", "")),
                   "similarity": to_float(p.get("similarity")), "issue": p.get("issue", "")}
                  for _, p in ranked]
    outlier_items = [{"img": image(o["path"], o.get("class", ""), o.get("split", "")),
                      "score": to_float(o.get("score"))} for o in outliers]

    counts = {p.get("class"): p for p in details.get("per_class", []) if isinstance(p, dict)}
    noise_rows = []
    for row in noise if isinstance(noise, list) else []:
        if isinstance(row, dict) and "class" in row:
            extra = counts.get(row["class"], {})
            noise_rows.append({"class": row["class"],
                               "rate": to_float(row.get("label_noise_rate"), 0.0),
                               "n_images": extra.get("n_images"),
                               "n_label_issues": extra.get("n_label_issues")})

    files = [Path(im.pop("file")) if im["file"] else None for im in images]
    uris = page_thumbs.data_uris([f for f in files if f is not None]) if thumbnails else []
    it = iter(uris)
    thumbs = [next(it, None) if f is not None else None for f in files]
    summary = {k: details[k] for k in ("n_label_issues", "label_noise_rate", "n_near_duplicates",
                                       "n_near_duplicates_across_splits",
                                       "n_near_duplicates_across_classes", "n_outliers")
               if k in details}
    return {"classes": classes, "splits": sorted({im["split"] for im in images}),
            "images": images, "thumbs": thumbs, "issues": issue_items, "pairs": pair_items,
            "outliers": outlier_items, "noise": noise_rows, "summary": summary}


def _pair_rank(issue: str) -> int:
    return PAIR_RANK.index(issue) if issue in PAIR_RANK else len(PAIR_RANK)


def render(data: dict) -> str:
    n_issues, n_pairs, n_out = len(data["issues"]), len(data["pairs"]), len(data["outliers"])
    s = data["summary"]
    noise = s.get("label_noise_rate")
    stats = "".join(f'<div class="stat"><b>{esc(v)}</b>{esc(k)}</div>' for k, v in (
        ("suspect labels", n_issues), ("near-duplicate pairs", n_pairs), ("outliers", n_out),
        ("estimated label noise", f"{noise:.1%}" if isinstance(noise, (int, float)) else "n/a")))
    options = lambda values: "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
    header = (
        '<h1>folderfit label review</h1><div class="bar">'
        f'<label>class <select id="f-class"><option value="">all</option>{options(data["classes"])}</select></label>'
        f'<label>split <select id="f-split"><option value="">all</option>{options(data["splits"])}</select></label>'
        '<label><input type="checkbox" id="k-issue" checked> label issues</label>'
        '<label><input type="checkbox" id="k-pair" checked> near-duplicates</label>'
        '<label><input type="checkbox" id="k-outlier" checked> outliers</label>'
        '<span id="shown" class="muted"></span>'
        '<span style="flex:1"></span><span id="n-dec" class="muted">0 decisions</span>'
        '<button class="main" id="export">Export corrections.csv</button>'
        '<button class="plain" id="show-csv">Show CSV</button><button class="plain" id="clear">Clear</button>'
        '<span id="status"></span></div>'
        '<textarea id="csv" class="hidden" readonly></textarea>')
    noise_rows = "".join(
        f'<tr><td class="l">{esc(r["class"])}</td><td>{r["rate"]:.1%}</td>'
        f'<td class="l"><span class="meter" style="width:{min(200, round(200 * r["rate"]))}px"></span></td>'
        f'<td>{esc(r["n_label_issues"] if r["n_label_issues"] is not None else "")}</td>'
        f'<td>{esc(r["n_images"] if r["n_images"] is not None else "")}</td></tr>' for r in data["noise"])
    body = (
        f'<div class="stats">{stats}</div>'
        '<p class="muted">Score = out-of-sample probability of the given label (low = suspect). '
        'Decide with Keep / Drop / Relabel; opened from disk, <b>Export corrections.csv</b> gives '
        'rows for data/corrections.csv (with <code>folderfit review --serve</code> every click is '
        'saved there). Then <code>dvc repro</code> and <code>dvc metrics diff</code>. Test images '
        'get no suggested relabel: change the yardstick only by looking.</p>'
        f'<section id="s-issue"><h2>Suspect labels ({n_issues}), most suspect first</h2>'
        '<div class="grid" id="issues"></div></section>'
        f'<section id="s-pair"><h2>Near-duplicate pairs ({n_pairs}), cross-class and cross-split first</h2>'
        '<div class="pairs" id="pairs"></div></section>'
        f'<section id="s-outlier"><h2>Outliers ({n_out}), farthest from their neighbours first</h2>'
        '<div class="grid" id="outliers"></div></section>'
        '<section id="s-noise"><h2>Estimated label noise per class</h2>'
        '<table><tr><th class="l">class</th><th>noise</th><th class="l"></th><th>flagged</th>'
        f'<th>images</th></tr>{noise_rows}</table></section>')
    return page("folderfit label review", header, body,
                json_script("data", data) + "\n" + MODE_FILE, SCRIPT)


def write(review_dir: Path, prepared_dir: Path, out: Path) -> Path:
    """Write the review page `out` (e.g. metrics/review/index.html) from the review stage's
    files in `review_dir` and prepare's manifest in `prepared_dir`; atomic."""
    write_text(out, render(collect(review_dir, prepared_dir)))
    return Path(out)


SCRIPT = r"""
'use strict';
const D = JSON.parse(document.getElementById('data').textContent);
const SERVE = JSON.parse(document.getElementById('mode').textContent).serve;
const TOKEN = new URLSearchParams(location.search).get('token') || '';
const PAGE = 500;                     // cards built per step: 10,000 items stay responsive
const decisions = new Map();          // path -> 'keep' | 'drop' | 'relabel:<class>'
const $ = id => document.getElementById(id);
// every path in page order (issues, pairs, outliers): the export's row order
const order = [...new Set([...D.issues.map(i => i.img), ...D.pairs.flatMap(p => [p.a, p.b]),
                           ...D.outliers.map(o => o.img)].map(i => D.images[i].path))];

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// thumbnails get their src only when near the viewport
const lazy = 'IntersectionObserver' in window ? new IntersectionObserver(entries => {
  for (const e of entries) if (e.isIntersecting) { load(e.target); lazy.unobserve(e.target); }
}, {rootMargin: '600px'}) : null;
function load(img) { const t = D.thumbs[+img.dataset.img]; if (t) img.src = t; else img.alt = 'no image'; }

function card(i, kind, lines, suggested) {
  const im = D.images[i];
  const c = el('div', 'card');
  c.dataset.path = im.path; c.dataset.kind = kind; c.dataset.split = im.split; c.dataset.cls = im.class;
  const img = el('img', 'thumb'); img.loading = 'lazy'; img.decoding = 'async'; img.alt = im.path;
  img.dataset.img = i; img.width = 112; img.height = 112;
  if (lazy) lazy.observe(img); else load(img);
  c.append(img);
  for (const [cls, text] of lines) c.append(el('div', cls, text));
  const p = el('div', 'path', im.path); p.title = im.path; c.append(p);
  const meta = el('div'); meta.append(el('span', 'badge' + (im.split === 'test' ? ' test' : ''), im.split),
                                      document.createTextNode(' '), el('span', 'badge', im.class));
  c.append(meta);
  const test = im.split === 'test';
  if (test) c.append(el('div', 'note', 'test image: decide by looking'));
  const ctl = el('div', 'ctl');
  const keep = el('button', 'keep', 'Keep'); keep.onclick = () => decide(im.path, 'keep');
  const drop = el('button', 'drop', 'Drop'); drop.onclick = () => decide(im.path, 'drop');
  ctl.append(keep, drop);
  if (suggested && !test && suggested !== im.class) {
    const r = el('button', 'relabel', 'Relabel \u2192 ' + suggested);
    r.dataset.to = suggested; r.onclick = () => decide(im.path, 'relabel:' + suggested);
    ctl.append(r);
  }
  const sel = el('select', 'relabel-to');
  sel.append(new Option('relabel to\u2026', ''));
  for (const k of D.classes) if (k !== im.class) sel.append(new Option(k, k));
  sel.onchange = () => { if (sel.value) decide(im.path, 'relabel:' + sel.value); };
  ctl.append(sel);
  c.append(ctl, el('div', 'decision'));
  paint(c, decisions.get(im.path));
  return c;
}

function paint(c, action) {
  c.classList.remove('d-keep', 'd-drop', 'd-relabel');
  for (const b of c.querySelectorAll('button')) b.classList.remove('on');
  const text = c.querySelector('.decision');
  if (!action) { text.textContent = ''; return; }
  const kind = action.split(':')[0];
  c.classList.add('d-' + kind);
  text.textContent = action === 'keep' ? 'keep as ' + c.dataset.cls : action.replace('relabel:', 'relabel \u2192 ');
  if (kind === 'keep' || kind === 'drop') c.querySelector('button.' + kind).classList.add('on');
  const r = c.querySelector('button.relabel');
  if (r && action === 'relabel:' + r.dataset.to) r.classList.add('on');
}
function repaint(path) {  // every built card of this image (it may sit in several lists)
  for (const c of document.querySelectorAll('.card')) if (c.dataset.path === path) paint(c, decisions.get(path));
}
function counted() { $('n-dec').textContent = decisions.size + ' decision' + (decisions.size === 1 ? '' : 's'); }

// opened from disk, decisions are kept in the browser (per page file) until exported
const KEY = 'folderfit-review:' + location.pathname + ':' + order.length + ':' + (order[0] || '');
function remember() {
  if (SERVE) return;
  try { localStorage.setItem(KEY, JSON.stringify([...decisions])); } catch (e) { /* storage off */ }
}
function recall() {
  if (SERVE) return;
  let saved = [];
  try { saved = JSON.parse(localStorage.getItem(KEY) || '[]'); } catch (e) { saved = []; }
  const known = new Set(order);
  for (const [p, a] of Array.isArray(saved) ? saved : []) if (known.has(p) && typeof a === 'string') decisions.set(p, a);
  counted();
}

function decide(path, action) {
  decisions.set(path, action);
  repaint(path); counted(); remember();
  if (!$('csv').classList.contains('hidden')) $('csv').value = csvText();
  if (SERVE) save([{path, action}]);
}

function save(rows) {
  status('saving\u2026', '');
  fetch('/api/decisions', {method: 'POST', headers: {'Content-Type': 'application/json',
        'X-Folderfit-Token': TOKEN}, body: JSON.stringify({decisions: rows})})
    .then(r => r.json().then(j => [r.ok, j]))
    .then(([ok, j]) => ok ? status('saved: ' + j.rows + ' row(s) in ' + j.file, 'ok')
                          : status('not saved: ' + j.error, 'err'))
    .catch(e => status('not saved: ' + e, 'err'));
}
function status(text, cls) { const s = $('status'); s.textContent = text; s.className = cls; }

// quoted as corrections.format_row does: a leading '#' would make the line a comment, and
// unquoted cells lose their outer spaces
function cell(s) { return /^#|^\s|\s$|[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
function csvText() {
  const lines = ['path,action'];
  for (const p of order) { const a = decisions.get(p); if (a && a !== 'keep') lines.push(cell(p) + ',' + cell(a)); }
  return lines.join('\n') + '\n';
}

$('export').onclick = () => {
  const url = URL.createObjectURL(new Blob([csvText()], {type: 'text/csv'}));
  const a = el('a'); a.href = url; a.download = 'corrections.csv'; document.body.append(a); a.click();
  a.remove(); setTimeout(() => URL.revokeObjectURL(url), 1000);
};
$('clear').onclick = () => {
  if (SERVE || !decisions.size || !confirm('Forget the ' + decisions.size + ' decision(s) made on this page?')) return;
  decisions.clear(); remember(); counted(); filter();
};
$('show-csv').onclick = () => { const t = $('csv'); t.classList.toggle('hidden'); t.value = csvText(); };

function fmt(x) { return x === null || x === undefined ? 'n/a' : (+x).toFixed(3); }

// the three lists: filtered from the data, built PAGE cards at a time as the reader scrolls
let want = () => true;
const match = i => want(D.images[i]);
const sections = {
  issue: {box: $('issues'), items: D.issues, match: it => match(it.img),
          make: it => card(it.img, 'issue', [['label', it.given + ' \u2192 ' + it.suggested],
                                             ['score', 'score ' + fmt(it.score)]], it.suggested)},
  pair: {box: $('pairs'), items: D.pairs, match: p => match(p.a) || match(p.b), make: p => {
    const box = el('div', 'pair'); box.dataset.kind = 'pair';
    box.append(el('div', p.issue ? 'issue' : 'muted', (p.issue || 'same class and split') + ' \u00b7 similarity ' + fmt(p.similarity)));
    const two = el('div', 'two'), a = D.images[p.a], b = D.images[p.b];
    two.append(card(p.a, 'pair', [['label', a.class]], b.class), card(p.b, 'pair', [['label', b.class]], a.class));
    box.append(two); return box; }},
  outlier: {box: $('outliers'), items: D.outliers, match: o => match(o.img),
            make: o => card(o.img, 'outlier', [['label', D.images[o.img].class],
                                               ['score', 'distance ' + fmt(o.score)]], null)},
};
const more = 'IntersectionObserver' in window ? new IntersectionObserver(entries => {
  for (const e of entries) if (e.isIntersecting) grow(sections[e.target.dataset.kind]);
}, {rootMargin: '1200px'}) : null;
for (const [kind, s] of Object.entries(sections)) {
  s.more = el('div', 'muted'); s.more.dataset.kind = kind; s.box.after(s.more);
  if (more) more.observe(s.more);
}
function grow(s) {
  if (s.shown >= s.list.length) return;
  const end = Math.min(s.list.length, s.shown + (more ? PAGE : s.list.length)), frag = document.createDocumentFragment();
  for (let i = s.shown; i < end; i++) frag.append(s.make(s.list[i]));
  s.box.append(frag); s.shown = end;
  s.more.textContent = end < s.list.length ? 'showing ' + end + ' of ' + s.list.length + ': scroll for more' : '';
  if (more && end < s.list.length) { more.unobserve(s.more); more.observe(s.more); }  // still in view: next step
}
function filter() {
  const k = $('f-class').value, sp = $('f-split').value;
  want = im => (!k || im.class === k) && (!sp || im.split === sp);
  let n = 0, total = 0;
  for (const [kind, s] of Object.entries(sections)) {
    const on = $('k-' + kind).checked;
    $('s-' + kind).classList.toggle('hidden', !on);
    s.list = s.items.filter(s.match); s.shown = 0; s.box.replaceChildren(); grow(s);
    if (!s.list.length) s.more.textContent = s.items.length ? 'none with these filters' : 'none found';
    total += s.items.length; if (on) n += s.list.length;
  }
  $('shown').textContent = 'showing ' + n + ' of ' + total;
}
for (const id of ['f-class', 'f-split', 'k-issue', 'k-pair', 'k-outlier']) $(id).onchange = filter;

function fetchSaved() {  // decisions already in data/corrections.csv
  fetch('/api/decisions', {headers: {'X-Folderfit-Token': TOKEN}})
    .then(r => r.ok ? r.json() : r.json().then(j => Promise.reject(j.error)))
    .then(j => { for (const row of j.decisions) { decisions.set(row.path, row.action); repaint(row.path); }
      counted(); status('serving: each click is saved to ' + j.file, 'ok'); })
    .catch(e => status('could not read the saved decisions: ' + e, 'err'));
}
recall();
filter();
document.body.dataset.ready = '1';
if (SERVE) fetchSaved();
"""
