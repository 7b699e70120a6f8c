"""A minimal Chrome DevTools Protocol client over aiohttp's websocket: just enough to give a
headless Chromium a cookie, load a page, read its DOM and take a screenshot.

Chromium is started by PID with its own profile directory and a debugging port it picks
itself (``--remote-debugging-port=0``; the port is read from ``DevToolsActivePort``), on
loopback only, and stopped by that PID.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

INSTALL_HINT = (
    "Chromium is not installed: the runs page test renders the page in headless Chromium."
    " Install Debian's package with `make test-tools` (apt-get install -y chromium)."
)


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@contextlib.contextmanager
def chromium(profile_dir: str, *, width: int = 1280, height: int = 900) -> Iterator[int]:
    """A headless Chromium; yields its DevTools port."""
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    cmd = [
        binary,
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI containers
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile_dir}",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        "about:blank",
    ]
    os.makedirs(profile_dir, exist_ok=True)
    log = open(os.path.join(profile_dir, "chromium.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port_file = Path(profile_dir, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = Path(profile_dir, "chromium.log").read_text()[-2000:]
                raise RuntimeError(f"Chromium did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.1)
        yield int(port_file.read_text().split()[0])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


class Page:
    """One page target: ``await page.call(method, **params)``; events are kept by name."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), timeout=30)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))
            if "method" in msg:
                self.events.append(msg)

    async def wait_event(self, name: str, timeout: float = 30) -> dict[str, Any]:
        for i, event in enumerate(self.events):
            if event["method"] == name:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {name} event")
            msg = await asyncio.wait_for(self.ws.receive_json(), timeout=left)
            if msg.get("method") == name:
                return dict(msg)
            if "method" in msg:
                self.events.append(msg)

    async def load(self, url: str) -> int:
        """Navigate and wait for the load event; returns the document's HTTP status."""
        self.events.clear()
        await self.call("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired")
        status = 0
        for event in self.events:
            if event["method"] == "Network.responseReceived" and event["params"]["type"] == (
                "Document"
            ):
                status = int(event["params"]["response"]["status"])
        return status

    async def text(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def screenshot(self, path: str) -> bytes:
        shot = await self.call("Page.captureScreenshot", format="png")
        data = base64.b64decode(shot["data"])
        with open(path, "wb") as fh:
            fh.write(data)
        return data


@contextlib.asynccontextmanager
async def open_page(port: int) -> Any:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        target = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            await page.call("Page.enable")
            await page.call("Network.enable")
            yield page
