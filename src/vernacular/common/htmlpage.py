"""Self-contained HTML report pages: one stylesheet, text escaping with links, embedded PNG figures,
and a small Markdown-to-HTML conversion for the project's own summaries (headings, paragraphs,
lists, pipe tables, **bold** and `code`; nothing else is needed by them)."""

from __future__ import annotations

import base64
import html
import io
import re

from matplotlib.figure import Figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_URL = re.compile(r"https?://[^\s<>\"')]+")

# Wide tables scroll inside themselves (display:block) so a narrow window never scrolls the whole
# page sideways; the page checks in headless Chromium hold the pages to that.
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45;overflow-wrap:break-word}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em}
.headline{font-size:1.1em}
.label{padding:.6em .9em;border-left:5px solid #888;background:#f4f4f4;font-weight:600}
.label.cpu{border-color:#d9822b;background:#fdf3e7}
table{border-collapse:collapse;margin:.6em 0;display:block;max-width:100%;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.35em .6em;text-align:left;vertical-align:top}
thead th{background:#eef2f7}
tbody th{font-weight:normal;background:#fafafa}
td.num{text-align:right;white-space:nowrap}
img{max-width:100%;height:auto;border:1px solid #ddd}
"""


def text_html(text: str) -> str:
    """Escape text and turn http(s) URLs into links."""
    out, last = [], 0
    for m in _URL.finditer(text):
        out += [html.escape(text[last:m.start()]),
                f'<a href="{html.escape(m.group(0), quote=True)}">{html.escape(m.group(0))}</a>']
        last = m.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for embedding in a page)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def png_img(png: bytes, alt: str) -> str:
    """An <img> holding `png` as a data URI; ValueError for bytes that are not a PNG."""
    if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(PNG_SIGNATURE):
        raise ValueError("png must be the bytes of a PNG image (see figure_png)")
    data = base64.b64encode(bytes(png)).decode("ascii")
    return f'<img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,{data}">'


def page_head(title: str) -> list[str]:
    return ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>"]


def _inline(text: str) -> str:
    out = text_html(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def markdown_html(markdown: str) -> str:
    """HTML for the Markdown the project's summaries use."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"(#{1,6}) (.*)", line):
            out.append(f"<h{len(m.group(1))}>{_inline(m.group(2))}</h{len(m.group(1))}>")
            i += 1
        elif line.startswith("|") and i + 1 < len(lines) and re.match(r"\|[\s:|-]+\|?$", lines[i + 1]):
            head = _cells(line)
            out += ["<table>", "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead>",
                    "<tbody>"]
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(lines[i])) + "</tr>")
                i += 1
            out += ["</tbody>", "</table>"]
        elif re.match(r"(- |\d+\. )", line):
            tag = "ul" if line.startswith("- ") else "ol"
            out.append(f"<{tag}>")
            while i < len(lines) and re.match(r"(- |\d+\. )", lines[i]):
                item = re.sub(r"^(- |\d+\. )", "", lines[i])
                i += 1
                nested = []
                while i < len(lines) and lines[i].startswith("  - "):
                    nested.append(f"<li>{_inline(lines[i][4:])}</li>")
                    i += 1
                out.append(f"<li>{_inline(item)}" + (f"<ul>{''.join(nested)}</ul>" if nested else "") + "</li>")
            out.append(f"</{tag}>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not re.match(r"(#{1,6} |\||- |\d+\. )", lines[i]):
                paragraph.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "\n".join(out)
