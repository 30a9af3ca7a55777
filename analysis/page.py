"""The report as one HTML page that navigates: a contents sidebar (sweeps, then sections), each figure with its
table folded beneath it (<details>), long tables collapsed and cut to MAX_ROWS rows (the CSV has all)."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.sections import SECTIONS, Item

MAX_ROWS = 200     # rows of a table shown in the page
OPEN_ROWS = 30     # a table with more rows starts folded

_CSS = """body{font-family:system-ui,sans-serif;margin:0;color:#222;font-size:15px;line-height:1.4}
.layout{display:grid;grid-template-columns:250px minmax(0,1fr)}
nav{position:sticky;top:0;align-self:start;max-height:100vh;overflow:auto;padding:1em;background:#f7f7f7;
 border-right:1px solid #ddd;font-size:13px} nav ol{padding-left:1.2em;margin:.2em 0} nav a{text-decoration:none}
nav .off{color:#999} main{padding:0 2em 4em;max-width:1250px}
img{max-width:100%;border:1px solid #ddd} figure{margin:1em 0}
table{border-collapse:collapse;font-size:12.5px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} td{white-space:nowrap} th{background:#f4f4f4}
tbody th{text-align:left}
.cap,figcaption{color:#555;font-size:13px} .skip{color:#a60;font-size:13px} .note{color:#a60}
details{margin:.3em 0 1.2em} summary{cursor:pointer;color:#0366d6;font-size:13px}
h2{border-bottom:2px solid #ddd;padding-top:.5em} h3{margin-top:1.8em} a.top{font-size:12px;margin-left:.6em}"""


def anchor(*parts: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9_-]+", "-", p).strip("-") for p in parts)


def _table(it: Item, pre: str, folded: bool) -> str:
    e = html.escape
    t = it.table
    links = " · ".join(f"<a href='{e(pre + str(f))}'>{e(f.suffix[1:])}</a>" for f in it.files
                       if f.suffix in (".csv", ".md"))
    body = t.html(MAX_ROWS) + f"<p class=cap>{links}</p>"
    if not folded and (t.rows <= OPEN_ROWS or getattr(t, "always_open", False)):
        return body
    what = "Table beneath this figure" if it.kind == "figure" else "Show the table"
    return f"<details><summary>{e(what)}: {e(t.title)} ({t.rows} rows)</summary>{body}</details>"


def _item(it: Item, pre: str) -> str:
    e = html.escape
    if it.skipped:
        return f"<p class=skip>{e(it.title)}: skipped, {e(it.skipped)}</p>"
    out = []
    note = f" <span class=note>{e(it.note)}</span>" if it.note else ""
    if it.kind == "figure":
        png = next(f for f in it.files if f.suffix == ".png")
        svg = next((f for f in it.files if f.suffix == ".svg"), None)
        out.append(f"<figure id='{e(anchor(pre, it.name))}'><a href='{e(pre + str(png))}' title='full size'>"
                   f"<img loading=lazy src='{e(pre + str(png))}' alt='{e(it.title)}'></a>"
                   f"<figcaption>{e(it.caption)}{note}"
                   + (f" · <a href='{e(pre + str(svg))}'>svg</a>" if svg else "") + "</figcaption></figure>")
        if it.table is not None:
            out.append(_table(it, pre, folded=True))
    else:
        out.append(f"<h4 id='{e(anchor(pre, it.name))}'>{e(it.title)}</h4><p class=cap>{e(it.caption)}{note}</p>")
        if it.table is not None:
            out.append(_table(it, pre, folded=False))
    return "\n".join(out)


def write_html(path: Path, reports: Sequence[Any], prefix: str | None) -> None:
    """index.html for `reports` (analysis.report.SweepReport): figures inline (PNG; SVG linked), tables
    beneath them; prefix None: links go through each sweep's folder (the top-level index)."""
    e = html.escape
    nav = ["<b>basin report</b>"]
    body = [f"<h1 id=top>basin report</h1><p class=cap>{e(time.strftime('%Y-%m-%d %H:%M'))} · "
            f"{len(reports)} sweep(s)</p>"]
    if not reports:
        body.append("<p class=skip>No trials found.</p>")
    titles = {s.id: s for s in SECTIONS}
    for rep in reports:
        pre = f"{rep.folder.name}/" if prefix is None else prefix
        sweep_id = anchor("sweep", rep.folder.name)
        nav.append(f"<p><a href='#{sweep_id}'>sweep {e(rep.sweep or '(unnamed)')}</a></p><ol>")
        body.append(f"<section id='{sweep_id}'><h2>sweep {e(rep.sweep or '(unnamed)')}</h2>"
                    f"<p class=cap>{e(rep.summary)} · from {e(rep.source)}</p>")
        order = list(dict.fromkeys([s.id for s in SECTIONS] + [it.section for it in rep.items]))
        for sid in order:
            items = [it for it in rep.items if it.section == sid]
            if not items:
                continue
            sec = titles.get(sid)
            name = sec.title if sec else (sid or "Everything")
            sec_id = anchor(rep.folder.name, sid or "all")
            made = [it for it in items if not it.skipped]
            nav.append(f"<li><a href='#{sec_id}'{'' if made else ' class=off'}>{e(name)}</a></li>")
            body.append(f"<section id='{sec_id}'><h3>{e(name)}<a class=top href='#top'>↑ top</a></h3>")
            if sec and sec.intro:
                body.append(f"<p class=cap>{e(sec.intro)}</p>")
            body += [_item(it, pre) for it in items]
            body.append("</section>")
        nav.append("</ol>")
        body.append("</section>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<!doctype html><html><head><meta charset='utf-8'><title>basin report</title>"
                    f"<style>{_CSS}</style></head><body><div class=layout><nav>" + "\n".join(nav) + "</nav><main>\n"
                    + "\n".join(body) + "\n</main></div></body></html>\n")
