"""Screenshot of a `kedro viz build` output in headless Chromium, after checking the graph rendered.

    kedro viz build
    python -m tools.viz_screenshot --build build --pipeline radiology \
        --out docs/img/kedro-viz-radiology.png

The build folder is served on 127.0.0.1 (a free port) for the duration of the call; nothing is
fetched from elsewhere (the page's external fonts are unreachable offline and not needed).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Served next to the build (not written into it): seeds kedro-viz's localStorage so the onboarding
# tour does not cover the graph, then opens the pipeline with its namespaces expanded.
PREP_PATH = "/__vernacular_prepare.html"
_LABEL = re.compile(r'<text class="pipeline-node__text"[^>]*>([^<]*)</text>')


class VizScreenshotError(RuntimeError):
    """The build, the browser or the rendered page is not what the screenshot needs."""


def find_chromium(explicit: str | None = None) -> str | None:
    """Path of a Chromium/Chrome executable (`explicit`, else the first of CHROMIUM_NAMES on PATH)."""
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    return None


def read_graph(build_dir: Path) -> dict:
    """The graph JSON (`api/main`) of a kedro-viz build."""
    main = Path(build_dir) / "api" / "main"
    if not main.is_file():
        raise VizScreenshotError(f"{main} not found: run `kedro viz build` in the project first "
                                 f"(it writes build/), or pass --build to the folder it wrote.")
    try:
        return json.loads(main.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise VizScreenshotError(f"{main} is not JSON ({exc}): rebuild with `kedro viz build`.") from exc


def pipeline_task_names(graph: dict, pipeline_id: str) -> list[str]:
    """Short names (namespace stripped, as the flowchart labels them) of the pipeline's task nodes."""
    known = [p["id"] for p in graph.get("pipelines", [])]
    if pipeline_id not in known:
        raise VizScreenshotError(f"pipeline {pipeline_id!r} is not in the build (has: {', '.join(known)}); "
                                 f"pass one of those to --pipeline.")
    return sorted({n["name"].rsplit(".", 1)[-1] for n in graph["nodes"]
                   if n["type"] == "task" and pipeline_id in n.get("pipelines", [])})


def _prepare_page(pipeline_id: str, theme: str) -> bytes:
    state = json.dumps({"showFeatureHints": False, "featureHintStep": 0, "theme": theme,
                        "visible": {"miniMap": False}})
    target = json.dumps(f"/?pid={pipeline_id}&expandAllPipelines=true")
    return (f"<!doctype html><meta charset='utf-8'><script>"
            f"localStorage.setItem('KedroViz', {json.dumps(state)});"
            f"location.replace({target});</script>").encode()


@contextlib.contextmanager
def serve(build_dir: Path, prepare_page: bytes) -> Iterator[str]:
    """Serve `build_dir` (plus PREP_PATH) on 127.0.0.1 in a thread; yields the base URL."""

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            if self.path.split("?", 1)[0] == PREP_PATH:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(prepare_page)))
                self.end_headers()
                self.wfile.write(prepare_page)
                return
            super().do_GET()

        def log_message(self, *args):  # keep test and CLI output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(build_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _chromium(chromium: str, url: str, extra: list[str], window: tuple[int, int], budget_ms: int,
              timeout_s: float) -> str:
    with tempfile.TemporaryDirectory(prefix="vernacular-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars", "--mute-audio",
               f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
               f"--virtual-time-budget={budget_ms}", *extra, url]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise VizScreenshotError(f"{chromium} did not finish in {timeout_s:.0f} s "
                                     f"(raise --timeout on a loaded machine).") from exc
    if done.returncode != 0:
        raise VizScreenshotError(f"{chromium} exited with {done.returncode}: {done.stderr.strip()[-800:]}")
    return done.stdout


def rendered_labels(dom: str) -> list[str]:
    """Node labels drawn in the flowchart of a dumped kedro-viz page."""
    return [html.unescape(x) for x in _LABEL.findall(dom)]


def capture(build_dir: Path | str, out: Path | str, *, pipeline: str = "radiology", chromium: str | None = None,
            window: tuple[int, int] = (1400, 1300), budget_ms: int = 15000, timeout_s: float = 180.0,
            theme: str = "light", overwrite: bool = False) -> dict:
    """Render `pipeline` of a kedro-viz build, check every task node of it is drawn, save a PNG.

    Returns the labels drawn, the expected task names and the PNG size. Raises VizScreenshotError
    when Chromium is missing, the page did not draw the pipeline, or `out` exists and
    `overwrite` is false.
    """
    build_dir, out = Path(build_dir), Path(out)
    if out.exists() and not overwrite:
        raise VizScreenshotError(f"{out} exists: pass --overwrite to replace it, or choose another --out.")
    expected = pipeline_task_names(read_graph(build_dir), pipeline)
    browser = find_chromium(chromium)
    if browser is None:
        raise VizScreenshotError(f"no Chromium found (looked for {chromium or ', '.join(CHROMIUM_NAMES)}): "
                                 f"install it (Debian: apt-get install chromium) or pass --chromium PATH.")
    with serve(build_dir, _prepare_page(pipeline, theme)) as base:
        url = base + PREP_PATH
        dom = _chromium(browser, url, ["--dump-dom"], window, budget_ms, timeout_s)
        labels = rendered_labels(dom)
        missing = sorted(set(expected) - set(labels))
        if not labels or missing:
            raise VizScreenshotError(
                f"the page did not draw pipeline {pipeline!r} (missing nodes: {', '.join(missing) or 'all'}; "
                f"{len(labels)} labels drawn). Check the build with `kedro viz run` in a browser, "
                f"or raise --budget-ms on a slow machine.")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".viz-shot-") as tmp:
            tmp_png = Path(tmp) / "shot.png"
            _chromium(browser, url, [f"--screenshot={tmp_png}"], window, budget_ms, timeout_s)
            if not tmp_png.is_file() or tmp_png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
                raise VizScreenshotError(f"{browser} wrote no PNG for {url}.")
            os.replace(tmp_png, out)
    return {"out": str(out), "bytes": out.stat().st_size, "labels": labels, "expected_tasks": expected,
            "chromium": browser}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.viz_screenshot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build", help="folder written by `kedro viz build` (default: build)")
    parser.add_argument("--pipeline", default="radiology", help="registered pipeline to show (default: radiology)")
    parser.add_argument("--out", default="docs/img/kedro-viz-radiology.png", help="PNG to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--chromium", default=None, help="browser executable (default: chromium on PATH)")
    parser.add_argument("--theme", choices=("light", "dark"), default="light")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1300)
    parser.add_argument("--budget-ms", type=int, default=15000, help="virtual time the page gets to render")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before a browser call is abandoned")
    args = parser.parse_args(argv)
    try:
        result = capture(args.build, args.out, pipeline=args.pipeline, chromium=args.chromium,
                         window=(args.width, args.height), budget_ms=args.budget_ms, timeout_s=args.timeout,
                         theme=args.theme, overwrite=args.overwrite)
    except VizScreenshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result['out']} ({result['bytes']} bytes); drew {len(result['labels'])} nodes, "
          f"all {len(result['expected_tasks'])} tasks of {args.pipeline!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
