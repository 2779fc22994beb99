"""A real headless Chromium driven over the DevTools protocol (no Playwright, no driver download).

``find_chromium()`` is the Debian ``chromium`` binary (or ``$CHROMIUM``); ``Chromium`` starts it with a
private profile on a DevTools port it picks itself, opens a page, evaluates JavaScript, takes screenshots,
and on ``close()`` stops the browser and every process it started.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--mute-audio", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1"]


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def why_no_chromium() -> str:
    """The skip reason when there is no Chromium: whether it could be installed here."""
    if os.geteuid() != 0:
        how = "not root, so it cannot be installed here"
    elif not shutil.which("apt-get"):
        how = "no apt-get to install it with"
    else:
        how = "installable with `apt-get install -y chromium` (.ci/run does this), but not installed"
    return f"headless Chromium is absent ({how}); set CHROMIUM=/path/to/chromium to use another build"


class Chromium:
    def __init__(self, binary: str, width: int = 1400, height: int = 900, timeout: float = 60):
        import psutil
        import websocket

        self.profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
        self.process = psutil.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}",
                                     f"--window-size={width},{height}", "about:blank"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._id = 0
        try:
            port = self._devtools_port(timeout)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                pages = [t for t in json.load(response) if t["type"] == "page"]
            self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout,
                                                  suppress_origin=True)
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, timeout: float) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker.is_file() and (lines := marker.read_text().split()):
                return int(lines[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.process.returncode}")
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def send(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("text", "JavaScript error"))
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, interval: float = 0.5):
        """Evaluate ``expression`` until it is truthy; return its value (TimeoutError after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout:.0f} s: {expression}")
            time.sleep(interval)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Stop the browser and every process it started (renderers, zygotes, utilities)."""
        import psutil

        try:
            family = [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            family = [self.process]
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        from cards.review_app import terminate

        terminate(family, timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)
