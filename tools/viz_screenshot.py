"""Screenshot of a `kedro viz build` output in headless Chromium, after checking the graph rendered.

    kedro viz build
    python -m tools.viz_screenshot --build build --pipeline radiology \
        --out docs/img/kedro-viz-radiology.png

The build folder is served on 127.0.0.1 (a free port) for the duration of the call; nothing is
fetched from elsewhere (the page's external fonts are unreachable offline and not needed).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from pathlib import Path

from tools.chromium import BrowserError, add_browser_arguments, find_chromium, headless, require_chromium, screenshot, serve

__all__ = ["VizScreenshotError", "capture", "find_chromium", "pipeline_task_names", "read_graph", "rendered_labels"]

# Served next to the build (not written into it): seeds kedro-viz's localStorage so the onboarding
# tour does not cover the graph, then opens the pipeline with its namespaces expanded.
PREP_PATH = "/__vernacular_prepare.html"
_LABEL = re.compile(r'<text class="pipeline-node__text"[^>]*>([^<]*)</text>')


class VizScreenshotError(BrowserError):
    """The build, the browser or the rendered page is not what the screenshot needs."""


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


def default_view_labels(graph: dict) -> list[str]:
    """What the view a newcomer gets (`kedro viz run`, no pipeline chosen) draws: the default
    pipeline with each namespace collapsed into one node, so its labels are the namespaces and the
    tasks outside any namespace."""
    names = {n["name"] for n in graph["nodes"] if n["type"] == "modularPipeline"}
    names |= {n["name"] for n in graph["nodes"] if n["type"] == "task" and not n.get("modular_pipelines")
              and graph.get("selected_pipeline", "__default__") in n.get("pipelines", [])}
    return sorted(names)


def _prepare_page(pipeline_id: str | None, theme: str) -> bytes:
    state = json.dumps({"showFeatureHints": False, "featureHintStep": 0, "theme": theme,
                        "visible": {"miniMap": False}})
    # pipeline None: the page as `kedro viz run` opens it (default pipeline, namespaces collapsed)
    target = json.dumps("/" if pipeline_id is None else f"/?pid={pipeline_id}&expandAllPipelines=true")
    return (f"<!doctype html><meta charset='utf-8'><script>"
            f"localStorage.setItem('KedroViz', {json.dumps(state)});"
            f"location.replace({target});</script>").encode()


def rendered_labels(dom: str) -> list[str]:
    """Node labels drawn in the flowchart of a dumped kedro-viz page."""
    return [html.unescape(x) for x in _LABEL.findall(dom)]


def capture(build_dir: Path | str, out: Path | str, *, pipeline: str | None = "radiology", chromium: str | None = None,
            window: tuple[int, int] = (1400, 1300), budget_ms: int = 15000, timeout_s: float = 180.0,
            theme: str = "light", overwrite: bool = False) -> dict:
    """Render `pipeline` of a kedro-viz build (expanded; None: the default view, collapsed), check
    every task node of it (or every namespace) is drawn, save a PNG.

    Returns the labels drawn, the expected task names and the PNG size. Raises VizScreenshotError
    when Chromium is missing, the page did not draw the pipeline, or `out` exists and
    `overwrite` is false.
    """
    build_dir, out = Path(build_dir), Path(out)
    if out.exists() and not overwrite:
        raise VizScreenshotError(f"{out} exists: pass --overwrite to replace it, or choose another --out.")
    graph = read_graph(build_dir)
    expected = default_view_labels(graph) if pipeline is None else pipeline_task_names(graph, pipeline)
    browser = require_chromium(chromium)
    with serve(build_dir, {PREP_PATH: _prepare_page(pipeline, theme)}) as base:
        url = base + PREP_PATH
        dom = headless(browser, url, ["--dump-dom"], window, budget_ms, timeout_s)
        labels = rendered_labels(dom)
        missing = sorted(set(expected) - set(labels))
        if not labels or missing:
            raise VizScreenshotError(
                f"the page did not draw pipeline {pipeline!r} (missing nodes: {', '.join(missing) or 'all'}; "
                f"{len(labels)} labels drawn). Check the build with `kedro viz run` in a browser, "
                f"or raise --budget-ms on a slow machine.")
        screenshot(browser, url, out, window, budget_ms, timeout_s)
    return {"out": str(out), "bytes": out.stat().st_size, "labels": labels, "expected_tasks": expected,
            "chromium": browser}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.viz_screenshot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build", help="folder written by `kedro viz build` (default: build)")
    parser.add_argument("--pipeline", default="radiology",
                        help="registered pipeline to show, expanded (default: radiology); '' for the default view "
                             "a newcomer gets from `kedro viz run`")
    parser.add_argument("--out", default="docs/img/kedro-viz-radiology.png", help="PNG to write")
    parser.add_argument("--theme", choices=("light", "dark"), default="light")
    add_browser_arguments(parser, window=(1400, 1300), budget_ms=15000, timeout_s=180.0)
    args = parser.parse_args(argv)
    try:
        result = capture(args.build, args.out, pipeline=args.pipeline or None, chromium=args.chromium,
                         window=(args.width, args.height), budget_ms=args.budget_ms, timeout_s=args.timeout,
                         theme=args.theme, overwrite=args.overwrite)
    except BrowserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result['out']} ({result['bytes']} bytes); drew {len(result['labels'])} nodes, "
          f"all {len(result['expected_tasks'])} expected of {args.pipeline or 'the default view'!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
