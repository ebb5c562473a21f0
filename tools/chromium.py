"""Headless Chromium for the documentation screenshots and the page checks of the test suite.

Pages are served from a folder on 127.0.0.1 (a free port) for the duration of a call; nothing is
fetched from elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BrowserError(RuntimeError):
    """The browser is missing, failed, or the page is not what the caller needs."""


def find_chromium(explicit: str | None = None) -> str | None:
    """Path of a Chromium/Chrome executable (`explicit`, else the first of CHROMIUM_NAMES on PATH)."""
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    return None


def require_chromium(explicit: str | None = None) -> str:
    browser = find_chromium(explicit)
    if browser is None:
        raise BrowserError(f"no Chromium found (looked for {explicit or ', '.join(CHROMIUM_NAMES)}): "
                           f"install it (Debian: apt-get install chromium) or pass --chromium PATH.")
    return browser


@contextlib.contextmanager
def serve(folder: Path, extra_pages: dict[str, bytes] | None = None) -> Iterator[str]:
    """Serve `folder` (plus `extra_pages`, path -> HTML, not written into it) on 127.0.0.1 in a
    thread; yields the base URL."""
    extra_pages = extra_pages or {}

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            page = extra_pages.get(self.path.split("?", 1)[0])
            if page is not None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            super().do_GET()

        def log_message(self, *args):  # keep test and CLI output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def headless(chromium: str, url: str, extra: list[str], window: tuple[int, int], budget_ms: int,
             timeout_s: float) -> str:
    """Run one headless Chromium call on `url` (`extra`: `--dump-dom` or `--screenshot=PATH`); its stdout."""
    with tempfile.TemporaryDirectory(prefix="vernacular-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars", "--mute-audio",
               f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
               f"--virtual-time-budget={budget_ms}", *extra, url]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BrowserError(f"{chromium} did not finish in {timeout_s:.0f} s "
                               f"(raise --timeout on a loaded machine).") from exc
    if done.returncode != 0:
        raise BrowserError(f"{chromium} exited with {done.returncode}: {done.stderr.strip()[-800:]}")
    return done.stdout


def screenshot(chromium: str, url: str, out: Path, window: tuple[int, int], budget_ms: int,
               timeout_s: float) -> Path:
    """PNG of `url` at `window` size, written atomically to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".shot-") as tmp:
        tmp_png = Path(tmp) / "shot.png"
        headless(chromium, url, [f"--screenshot={tmp_png}"], window, budget_ms, timeout_s)
        if not tmp_png.is_file() or tmp_png.read_bytes()[:8] != PNG_MAGIC:
            raise BrowserError(f"{chromium} wrote no PNG for {url}.")
        tmp_png.replace(out)
    return out


def add_browser_arguments(parser: argparse.ArgumentParser, *, window: tuple[int, int], budget_ms: int,
                          timeout_s: float) -> None:
    """The options every screenshot command takes: overwrite, browser, window, render budget, timeout."""
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--chromium", default=None, help="browser executable (default: chromium on PATH)")
    parser.add_argument("--width", type=int, default=window[0])
    parser.add_argument("--height", type=int, default=window[1])
    parser.add_argument("--budget-ms", type=int, default=budget_ms, help="virtual time the page gets to render")
    parser.add_argument("--timeout", type=float, default=timeout_s, help="seconds before a browser call is abandoned")
