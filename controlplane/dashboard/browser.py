"""A real headless Chromium for checking the dashboard: Debian's `chromium`, driven over the Chrome
DevTools Protocol (CDP) on its websocket. Nothing is downloaded but the Debian package.

    python -m controlplane.dashboard.browser ensure   # installs chromium with apt-get when missing

`ensure_chromium()` runs `apt-get update && apt-get install -y --no-install-recommends chromium`
only when no chromium binary is found (`$CHROMIUM_BIN`, `/usr/bin/chromium`, `chromium` on PATH).
`Chromium` starts it with a throwaway profile, `--remote-debugging-port=0`, and reads the port
from `DevToolsActivePort` in the profile directory.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from bridge.kernel.config import ToolchainSettings, environment
from bridge.kernel.errors import GroqPolicyError, ToolchainError
from controlplane.infra.toolchain import ensure_command

DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--no-default-browser-check",
)


def find_chromium() -> Path | None:
    if configured := ToolchainSettings.from_env().chromium_bin:
        return configured if configured.is_file() else None
    if DEBIAN_CHROMIUM.is_file():
        return DEBIAN_CHROMIUM
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(found) if found else None


def ensure_chromium(log: TextIO = sys.stderr) -> Path:
    """The chromium binary; installs Debian's `chromium` package with apt-get when there is none."""
    found = find_chromium()
    if found is not None:
        return found
    if configured := ToolchainSettings.from_env().chromium_bin:
        raise ToolchainError(f"CHROMIUM_BIN={configured}: no such file (unset it to use or install Debian's chromium)")
    apt = shutil.which("apt-get")
    if apt is None:
        raise ToolchainError("chromium: not found ($CHROMIUM_BIN, /usr/bin/chromium, PATH) and apt-get is missing; "
                             "install Chromium and set CHROMIUM_BIN")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        raise ToolchainError("chromium: not found, and installing it needs root: run `apt-get install -y chromium` as root")
    print("chromium: not found; installing Debian's chromium package (apt-get) ...", file=log, flush=True)
    env = dict(environment(), DEBIAN_FRONTEND="noninteractive")
    for argv in ([*sudo, apt, "update"], [*sudo, apt, "install", "-y", "--no-install-recommends", "chromium"]):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ToolchainError(f"{' '.join(argv)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-1500:]}")
    found = find_chromium()
    if found is None:
        raise ToolchainError("chromium: apt-get install succeeded but no chromium binary was found")
    return found


class CDPError(GroqPolicyError):
    """The browser refused a DevTools call, or did not answer it in time."""


class Page:
    """One page target over CDP: navigate, run JS, collect console errors, take screenshots."""

    def __init__(self, ws_url: str, timeout: float = 30.0) -> None:
        try:
            from websockets.sync.client import connect
        except ImportError as exc:  # a dev dependency
            raise ToolchainError("the `websockets` package is needed to drive chromium (pip install -e '.[dev]')") from exc
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=timeout))
        self.timeout = timeout
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Page.enable")
        self.call("Network.enable")

    def close(self) -> None:
        self._stack.close()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if msg.get("id") == ident:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, event: str, timeout: float | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + (timeout or self.timeout)
        for e in self.events:
            if e["method"] == event:
                self.events.remove(e)
                return e
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"timed out waiting for {event}")
            msg = json.loads(self.ws.recv(timeout=left))
            if "method" in msg:
                if msg["method"] == event:
                    return msg
                self.events.append(msg)

    def navigate(self, url: str) -> None:
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"{url}: {result['errorText']}")
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CDPError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def drain(self, seconds: float = 0.2) -> None:
        """Collect events that arrive within `seconds` (late console messages)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                break

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (failed loads included)."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"exception: {d.get('text')} {d.get('exception', {}).get('description', '')}".strip())
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                out.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
        return out

    def screenshot(self, path: Path, width: int = 1400) -> Path:
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)") or 900)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


class Chromium:
    """`with Chromium() as browser: page = browser.new_page()`: a headless chromium, killed on exit."""

    def __init__(self, binary: Path | None = None, window: tuple[int, int] = (1400, 1000)) -> None:
        self.binary = binary or ensure_chromium()
        self.window = window
        self.profile = Path(tempfile.mkdtemp(prefix="groqpolicy-chromium-"))
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._pages: list[Page] = []

    def __enter__(self) -> Chromium:
        argv = [str(self.binary), *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1", f"--window-size={self.window[0]},{self.window[1]}", "about:blank"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise ToolchainError(f"chromium exited with {self.proc.returncode}: {err[-1500:]}")
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise ToolchainError("chromium: no DevToolsActivePort after 30 s")
            time.sleep(0.05)
        self.port = int(port_file.read_text().splitlines()[0])
        return self

    def new_page(self) -> Page:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as resp:
            target = json.loads(resp.read())
        page = Page(target["webSocketDebuggerUrl"])
        self._pages.append(page)
        return page

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def __exit__(self, *exc: object) -> None:
        for p in self._pages:
            try:
                p.close()
            except Exception:  # noqa: BLE001 - the browser is killed next; a page that fails to close changes nothing
                pass
        if self.proc is not None and self.proc.poll() is None:
            # chromium's helpers (zygote, renderers, GPU) share the session this process leads
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    return ensure_command("controlplane.dashboard.browser", argv, lambda: [f"chromium: {ensure_chromium()}"])


if __name__ == "__main__":
    raise SystemExit(main())
