"""The reports in a real browser: headless Chromium over the DevTools protocol.

Every image must load, the console must stay free of errors (a missing file, a blocked
resource and a script error all land there), nothing may be fetched from outside the report's
folder, and a full-page screenshot is kept in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, need
from test_report import Built, build_report, sample_entry

ARTIFACTS = REPO / "test-artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
TIMEOUT = 30.0

pytestmark = pytest.mark.slow


class DevTools:
    """A minimal DevTools client for one page: commands in order, events kept as they come."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        # Chromium refuses websocket clients that send an Origin it was not told to allow
        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self.last_id = 0

    def _receive(self, deadline: float) -> dict[str, Any]:
        if time.monotonic() > deadline:
            raise TimeoutError("no answer from Chromium in time")
        message: dict[str, Any] = json.loads(self.ws.recv())
        if "method" in message:
            self.events.append(message)
        return message

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        self.ws.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = self._receive(deadline)
            if message.get("id") == self.last_id:
                assert "error" not in message, f"{method}: {message['error']}"
                result: dict[str, Any] = message.get("result", {})
                return result

    def wait_for(self, event: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while not any(e["method"] == event for e in self.events):
            self._receive(deadline)
        return next(e for e in self.events if e["method"] == event)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        errors = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a)) for a in p.get("args", [])))
            elif e["method"] == "Runtime.exceptionThrown":
                errors.append(str(p.get("exceptionDetails", {}).get("text", p)))
            elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
                errors.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
        return errors

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    """A fresh headless Chromium with its own profile; always killed afterwards."""
    chromium = shutil.which("chromium")
    need(chromium is not None, "chromium is not installed (apt-get install chromium)")
    try:
        import websocket  # noqa: F401
    except ImportError:
        need(False, "websocket-client is not installed (pip install -e '.[test]')")
    profile = tmp_path / "chromium-profile"
    log = (tmp_path / "chromium.log").open("wb")
    argv = [chromium or "chromium", *FLAGS, f"--user-data-dir={profile}"]
    proc = subprocess.Popen(
        [*argv, "--remote-debugging-port=0", "--window-size=1280,900", "about:blank"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = None
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + TIMEOUT
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert proc.poll() is None, (tmp_path / "chromium.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT) as r:
            targets = json.load(r)
        page = next(t for t in targets if t.get("type") == "page")
        client = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            client.call(f"{domain}.enable")
        client.call(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield client
    finally:
        if client is not None:
            client.close()
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        log.close()


def _open(client: DevTools, page: Path) -> None:
    client.events.clear()
    client.call("Page.navigate", url=page.resolve().as_uri())
    client.wait_for("Page.loadEventFired")


def _screenshot(client: DevTools, name: str) -> Path:
    size = client.call("Page.getLayoutMetrics")["cssContentSize"]
    shot = client.call(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": 1280, "height": size["height"], "scale": 1},
    )
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {path}")
    return path


def _check_page(client: DevTools, page: Path, root: Path) -> None:
    images = client.evaluate(
        "Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0])"
    )
    assert all(ok for _, ok in images), [src for src, ok in images if not ok]
    resources = client.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith(root.resolve().as_uri()) for r in resources), resources
    assert client.console_errors() == []
    # the check above is only worth something if errors do get through to it
    client.evaluate("console.error('probe')")
    client.wait_for("Runtime.consoleAPICalled")
    assert client.console_errors() == ["probe"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_report(tmp_path_factory.mktemp("report"))


def test_subject_report_in_chromium(browser: DevTools, built: Built) -> None:
    _open(browser, built.html)
    count = browser.evaluate("document.images.length")
    assert count == 3
    _check_page(browser, built.html, built.dest)
    shot = _screenshot(browser, "report-screenshot.png")
    assert shot.stat().st_size > 10_000


def test_dataset_index_in_chromium(browser: DevTools, built: Built) -> None:
    from bidsapp.report.index import render_index

    index = built.dest.parent / "index.html"
    entries = [sample_entry("01", 2.0), sample_entry("02", 2.0), sample_entry("03", 3.0, "failed")]
    entries[2]["report"] = ""
    index.write_text(render_index(entries), encoding="utf-8")
    _open(browser, index)
    assert browser.evaluate("document.querySelectorAll('tbody tr').length") >= 5
    # the subject's link leads to its report
    href = browser.evaluate("document.querySelector('a[href$=\"report.html\"]').href")
    assert href == built.html.resolve().as_uri()
    _check_page(browser, index, built.dest.parent)
    _screenshot(browser, "index-screenshot.png")
