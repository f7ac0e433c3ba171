"""What both pages share: the HTML shell, the style sheet, safe JSON embedding, CSV readers
that tolerate extra columns, and the manifest lookup (source path -> prepared file)."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

from folderfit.artifacts.manifest import manifest_path
from folderfit.errors import PipelineError

CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--bg:#f6f7f9;--card:#fff;--line:#dde1e7;--accent:#2457c5;
--bad:#b3261e;--ok:#1e7d3a;--warn:#8a5a00}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 16px}
header h1{font-size:18px;margin:0 0 4px}
main{padding:12px 16px 48px}
section{margin:0 0 24px}
h2{font-size:16px;margin:16px 0 8px}
.muted{color:var(--muted)}
.bar{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center}
.bar label{white-space:nowrap}
.stats{display:flex;flex-wrap:wrap;gap:8px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:6px 10px}
.stat b{font-size:18px;display:block}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:8px}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:6px;font-size:12px;content-visibility:auto;contain-intrinsic-size:auto 250px;
  display:flex;flex-direction:column;gap:3px;min-width:0}
.card.hidden,.pair.hidden,.hidden{display:none}
.thumb{width:112px;height:112px;object-fit:contain;background:#e9ecf1;border-radius:4px;align-self:center}
.path{color:var(--muted);overflow:hidden;text-overflow:ellipsis;white-space:nowrap;direction:rtl;text-align:left}
.label{font-weight:600}
.badge{display:inline-block;padding:0 5px;border-radius:8px;background:#eef1f6;color:var(--muted);font-size:11px}
.badge.test{background:#fff3d6;color:var(--warn)}
.note{color:var(--warn);font-size:11px}
.ctl{display:flex;flex-wrap:wrap;gap:3px}
.ctl button,.ctl select{font-size:11px;padding:2px 5px;border:1px solid var(--line);border-radius:4px;background:#fff;cursor:pointer;max-width:100%}
.ctl button:hover{border-color:var(--accent)}
.ctl button.on{background:var(--accent);color:#fff;border-color:var(--accent)}
.card.d-drop{border-color:var(--bad);box-shadow:0 0 0 1px var(--bad)}
.card.d-relabel{border-color:var(--accent);box-shadow:0 0 0 1px var(--accent)}
.card.d-keep{border-color:var(--ok)}
.decision{font-size:11px;font-weight:600;min-height:1em}
.pairs{display:grid;grid-template-columns:repeat(auto-fill,minmax(370px,1fr));gap:8px}
.pair{background:#fff;border:1px solid var(--line);border-radius:6px;padding:6px}
.pair .two{display:flex;gap:6px}.pair .two .card{flex:1}
.issue{font-size:12px;font-weight:600;color:var(--bad)}
table{border-collapse:collapse;background:#fff}
td,th{border:1px solid var(--line);padding:3px 8px;text-align:right}
th{background:#f0f2f5}
td.l,th.l{text-align:left}
.meter{display:inline-block;height:8px;background:var(--accent);border-radius:2px;vertical-align:middle}
button.main{padding:4px 10px;border-radius:4px;border:1px solid var(--accent);background:var(--accent);color:#fff;cursor:pointer}
button.plain{padding:4px 10px;border-radius:4px;border:1px solid var(--line);background:#fff;cursor:pointer}
#status{font-weight:600}#status.err{color:var(--bad)}#status.ok{color:var(--ok)}
textarea{width:100%;height:160px;font:12px monospace}
.cm td.cell{cursor:pointer;min-width:44px}.cm td.cell:hover{outline:2px solid var(--accent)}
.cm td.sel{outline:3px solid var(--bad)}
.kv td{text-align:left}
"""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def json_script(element_id: str, data) -> str:
    """`data` inside <script type="application/json">: '<', '>' and '&' escaped, so no file name
    (e.g. one holding '</script>') can end the element or inject markup."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def page(title: str, header: str, body: str, data_scripts: str, script: str) -> str:
    """The whole document. No external resource at all (the icon link stops the browser from
    asking a server for /favicon.ico)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'\">"
        f"<link rel=\"icon\" href=\"data:,\"><title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f"<body><header>{header}</header>\n<main>{body}</main>\n{data_scripts}\n"
        f"<script>{script}</script></body></html>\n")


def read_csv(path: Path, required: tuple[str, ...], *, optional: bool = False) -> list[dict]:
    """Rows of a CSV written by a stage; extra columns are kept and ignored. A missing file is
    [] when `optional`, else an error; a missing required column is an error."""
    if not path.is_file():
        if optional:
            return []
        raise PipelineError(f"{path}: not found; run the stage that writes it first (dvc repro)")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise PipelineError(f"{path}: missing column(s) {', '.join(missing)}; rerun the stage "
                                f"that writes it (dvc repro)")
        return list(reader)


def read_json(path: Path, default=None):
    if not path.is_file():
        if default is not None:
            return default
        raise PipelineError(f"{path}: not found; run the stage that writes it first (dvc repro)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc}); rerun the stage that writes it") from None


def read_manifest(prepared_dir: Path) -> list[dict]:
    """prepare's manifest rows (file, source, class, split, ...)."""
    return read_csv(manifest_path(prepared_dir), ("file", "source", "class", "split"))


def to_float(value, default: float | None = None) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default
