"""Check a self-contained report page (the cost page, the evaluation page) in headless Chromium and
take its screenshot.

    python -m tools.page_screenshot --page data/08_reporting/radiology/cost_report.html/<version>/cost_report.html \
        --out docs/img/cost-page-radiology.png

The check loads the page as a browser draws it and fails unless every image decoded, nothing is
wider than the window (no sideways scrolling), and the page's text begins with `--expect` when given.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from pathlib import Path

from tools.chromium import BrowserError, add_browser_arguments, headless, require_chromium, screenshot, serve

PROBE_PATH = "/__vernacular_probe.html"
_RESULT = re.compile(r'<pre id="probe">(.*?)</pre>', re.S)


def _probe_page(page_name: str, window: tuple[int, int]) -> bytes:
    # The page is loaded in a same-origin frame of the window's size; once it has loaded, what it
    # drew is written into this document, which --dump-dom prints.
    src = json.dumps("/" + page_name)
    return (f"<!doctype html><meta charset='utf-8'><body style='margin:0'>"
            f"<iframe id='f' style='border:0' width='{window[0]}' height='{window[1]}'></iframe><script>"
            f"const f = document.getElementById('f');"
            f"f.onload = () => {{ const d = f.contentDocument, e = d.documentElement;"
            f"  const out = {{title: d.title, text: d.body.innerText.trim().slice(0, 4000),"
            f"    images: [...d.images].map(i => ({{alt: i.alt, width: i.naturalWidth, height: i.naturalHeight,"
            f"      shown: i.getBoundingClientRect().width}})),"
            f"    scrollWidth: e.scrollWidth, clientWidth: e.clientWidth, scrollHeight: e.scrollHeight,"
            f"    tables: d.querySelectorAll('table').length}};"
            f"  const p = document.createElement('pre'); p.id = 'probe'; p.textContent = JSON.stringify(out);"
            f"  document.body.appendChild(p); }};"
            f"f.src = {src};</script>").encode()


def inspect_page(page: Path | str, *, chromium: str | None = None, window: tuple[int, int] = (1200, 1600),
                 budget_ms: int = 5000, timeout_s: float = 120.0) -> dict:
    """What headless Chromium drew of `page`: title, text, images (decoded size), widths, tables."""
    page = Path(page)
    if not page.is_file():
        raise BrowserError(f"{page} not found: pass the .html file a run wrote (under data/08_reporting/).")
    browser = require_chromium(chromium)
    with serve(page.parent, {PROBE_PATH: _probe_page(page.name, window)}) as base:
        dom = headless(browser, base + PROBE_PATH, ["--dump-dom"], window, budget_ms, timeout_s)
    found = _RESULT.search(dom)
    if not found:
        raise BrowserError(f"{browser} did not finish loading {page} within {budget_ms} ms of virtual time "
                           f"(raise --budget-ms on a slow machine).")
    result = json.loads(html.unescape(found.group(1)))
    result["browser"] = browser
    return result


def page_problems(drawn: dict, expect: str | None = None) -> list[str]:
    """What is wrong with a drawn page, in words (empty when nothing is)."""
    problems = []
    if not drawn["images"]:
        problems.append("no image on the page")
    for image in drawn["images"]:
        if image["width"] == 0 or image["height"] == 0:
            problems.append(f"image {image['alt']!r} did not decode")
        elif image["shown"] > drawn["clientWidth"] + 1:
            problems.append(f"image {image['alt']!r} is wider ({image['shown']:.0f} px) than the window")
    if drawn["scrollWidth"] > drawn["clientWidth"] + 1:
        problems.append(f"the page scrolls sideways ({drawn['scrollWidth']} px wide in a "
                        f"{drawn['clientWidth']} px window)")
    if expect is not None and not drawn["text"].startswith(expect):
        problems.append(f"the page's text begins {drawn['text'][:120]!r}, not {expect!r}")
    return problems


def capture_page(page: Path | str, out: Path | str, *, expect: str | None = None, chromium: str | None = None,
                 window: tuple[int, int] = (1200, 1600), budget_ms: int = 5000, timeout_s: float = 120.0,
                 overwrite: bool = False) -> dict:
    """Check `page` (`page_problems`), then save a PNG of its first `window` to `out`."""
    page, out = Path(page), Path(out)
    if out.exists() and not overwrite:
        raise BrowserError(f"{out} exists: pass --overwrite to replace it, or choose another --out.")
    drawn = inspect_page(page, chromium=chromium, window=window, budget_ms=budget_ms, timeout_s=timeout_s)
    problems = page_problems(drawn, expect)
    if problems:
        raise BrowserError(f"{page} as Chromium draws it: " + "; ".join(problems))
    with serve(page.parent) as base:
        screenshot(drawn["browser"], f"{base}/{page.name}", out, window, budget_ms, timeout_s)
    return {**drawn, "out": str(out), "bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.page_screenshot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--page", required=True, help="the .html report page")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--expect", default=None, help="text the page must begin with")
    add_browser_arguments(parser, window=(1200, 1600), budget_ms=5000, timeout_s=120.0)
    args = parser.parse_args(argv)
    try:
        result = capture_page(args.page, args.out, expect=args.expect, chromium=args.chromium,
                              window=(args.width, args.height), budget_ms=args.budget_ms, timeout_s=args.timeout,
                              overwrite=args.overwrite)
    except BrowserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result['out']} ({result['bytes']} bytes); {len(result['images'])} images decoded, "
          f"{result['tables']} tables, {result['scrollHeight']} px tall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
