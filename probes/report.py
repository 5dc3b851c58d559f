"""The report: ``report.md`` and a self-contained ``report.html`` (figures embedded as base64).

A report is a list of sections, each with markdown-ish text (paragraphs, ``- `` bullet lists,
pipe tables and fenced code), and figures (PNG paths relative to the run folder, with
captions). The HTML needs no network and no external files.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from activations.io import atomic_write_text


@dataclass
class Figure:
    path: str  # relative to the run folder
    caption: str


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[Figure] = field(default_factory=list)


def to_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", "", s.text.strip(), ""]
        for f in s.figures:
            out += [f"![{f.caption}]({f.path})", "", f"*{f.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"


def _inline(text: str) -> str:
    """Escape, then render ``code`` and **bold**."""
    import re

    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)


def _md_block_to_html(text: str) -> str:
    lines = text.strip().splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1 : j])) + "</pre>")
            i = j + 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(set(c) <= set("-: ") for c in cells):
                    rows.append(cells)
                i += 1
            head, *body = rows
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(lines[i][2:])
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in items) + "</ul>")
        elif line.strip():
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("|", "- ", "```")):
                para.append(lines[i])
                i += 1
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
        else:
            i += 1
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:0.8em;overflow-x:auto;font-size:0.85em}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:0.9em;color:#555}
.verdict{font-size:1.3em;padding:0.6em 1em;background:#eef5ff;border-left:5px solid #3b7ddd}"""


def to_html(title: str, sections: list[Section], root: Path) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts.append(_md_block_to_html(s.text))
        for f in s.figures:
            p = root / f.path
            if not p.exists():
                parts.append(f"<p><em>figure missing: {html.escape(f.path)}</em></p>")
                continue
            b64 = base64.b64encode(p.read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(f.caption)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(root: str | Path, title: str, sections: list[Section]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``root`` (atomically); returns their paths."""
    root = Path(root)
    md, ht = root / "report.md", root / "report.html"
    atomic_write_text(md, to_markdown(title, sections))
    atomic_write_text(ht, to_html(title, sections, root))
    return md, ht
