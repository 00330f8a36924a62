"""A small headless-Chromium harness over the Chrome DevTools Protocol (for tests/test_browser.py).

    >>> with Browser.launch(find_chromium(), tmp_dir) as b:
    ...     page = b.new_page()
    ...     page.goto(Path("report.html").as_uri())
    ...     page.evaluate("document.title"), page.errors(), page.broken_images()

One websocket to the browser, pages attached with flat sessions. Every wait has a deadline (no call can
hang a test run) and :meth:`Browser.close` always ends the browser's process group.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import websocket  # websocket-client

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
TIMEOUT = 30.0          # seconds, for any single protocol exchange or wait
# schemes a self-contained report may load; anything else is an external request
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome-error:", "devtools:")


class CDPError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """$XAUDIT_CHROMIUM, else the first of CANDIDATES on PATH; None when there is none."""
    env = os.environ.get("XAUDIT_CHROMIUM")
    if env:
        return env if (Path(env).is_file() and os.access(env, os.X_OK)) else shutil.which(env)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """A headless Chromium started with --remote-debugging-port=0 and spoken to over its websocket."""

    def __init__(self, proc: subprocess.Popen, ws: websocket.WebSocket, stderr_lines: list[str], profile: Path):
        self.proc, self.ws, self.stderr_lines, self.profile = proc, ws, stderr_lines, profile
        self._ids = itertools.count(1)
        self._events: list[dict] = []            # every event received, in order (all sessions)
        self._pending: dict[int, dict] = {}      # replies received while waiting for another id

    @classmethod
    def launch(cls, binary: str, workdir: str | Path, *, timeout: float = TIMEOUT,
               window: tuple[int, int] = (1280, 1600)) -> "Browser":
        profile = Path(workdir) / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        args = [binary, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-gpu",
                "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--mute-audio", "--hide-scrollbars", f"--window-size={window[0]},{window[1]}",
                "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")          # Chromium refuses to run as root with its sandbox
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, errors="replace", start_new_session=True)
        lines: list[str] = []
        found = threading.Event()
        url: list[str] = []

        def drain():                         # keeps reading stderr so the browser never blocks on a full pipe
            for line in proc.stderr:
                lines.append(line.rstrip("\n"))
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                if m and not url:
                    url.append(m.group(1))
                    found.set()
            found.set()                      # stderr closed: the browser exited
            proc.stderr.close()

        threading.Thread(target=drain, daemon=True).start()
        try:
            if not found.wait(timeout) or not url:
                raise CDPError(f"chromium did not report its DevTools URL within {timeout:.0f} s "
                               f"(exit code {proc.poll()}); stderr:\n" + "\n".join(lines[-30:]))
            ws = websocket.create_connection(url[0], timeout=timeout, suppress_origin=True)
            return cls(proc, ws, lines, profile)
        except BaseException:
            _kill(proc)
            raise

    # ------------------------------------------------------------------------------------ protocol
    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = TIMEOUT) -> dict:
        """One command; returns its result, raises CDPError on a protocol error or after `timeout` s."""
        i = next(self._ids)
        msg: dict[str, Any] = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while i not in self._pending:
            self._receive(deadline, f"the reply to {method}")
        reply = self._pending.pop(i)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _receive(self, deadline: float, what: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CDPError(f"timed out waiting for {what}")
        self.ws.settimeout(left)
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            raise CDPError(f"timed out waiting for {what}") from None
        msg = json.loads(raw)
        if "id" in msg:
            self._pending[msg["id"]] = msg
        else:
            self._events.append(msg)

    def pump(self, seconds: float) -> None:
        """Read events for `seconds` (late console messages)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._receive(deadline, "events")
            except CDPError:
                return

    def wait_event(self, method: str, *, session: str | None = None, since: int = 0,
                   timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for e in self._events[since:]:
                if e.get("method") == method and (session is None or e.get("sessionId") == session):
                    return e
            since = len(self._events)
            self._receive(deadline, method)

    def events(self, session: str | None = None) -> list[dict]:
        return [e for e in self._events if session is None or e.get("sessionId") == session]

    # ------------------------------------------------------------------------------------ pages
    def new_page(self, *, width: int = 1280, height: int = 1600) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        return page

    def close(self) -> None:
        try:
            try:
                self.send("Browser.close", timeout=5)
            except Exception:
                pass
            try:
                self.ws.close()
            except Exception:
                pass
        finally:
            _kill(self.proc)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    def __init__(self, browser: Browser, target: str, session: str):
        self.browser, self.target, self.session = browser, target, session
        self._since = 0          # index into the browser's events where this page's current document began

    def send(self, method: str, params: dict | None = None, **kw) -> dict:
        return self.browser.send(method, params, session=self.session, **kw)

    def goto(self, url: str, *, timeout: float = TIMEOUT) -> None:
        """Navigate and wait for the load event (images included), then a moment for late messages."""
        self._since = len(self.browser._events)
        r = self.send("Page.navigate", {"url": url}, timeout=timeout)
        if r.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {r['errorText']}")
        self.browser.wait_event("Page.loadEventFired", session=self.session, since=self._since, timeout=timeout)
        self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        self.browser.pump(0.2)

    def evaluate(self, expression: str, *, timeout: float = TIMEOUT) -> Any:
        """The value of a JS expression (promises awaited); raises CDPError with the JS exception."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True,
                                           "userGesture": True, "timeout": int(timeout * 1000)},
                      timeout=timeout + 5)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CDPError(f"JS exception: {d.get('exception', {}).get('description') or d.get('text')}\n"
                           f"in: {expression[:300]}")
        return r.get("result", {}).get("value")

    # ------------------------------------------------------------------------------------ findings
    def _page_events(self) -> list[dict]:
        return [e for e in self.browser._events[self._since:] if e.get("sessionId") == self.session]

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors since the last :meth:`goto`."""
        out = []
        for e in self._page_events():
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                out.append(f"console.{p['type']}: {args}")
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                ent = p["entry"]
                out.append(f"log ({ent.get('source')}): {ent.get('text')} {ent.get('url', '')}".rstrip())
        return out

    def external_requests(self) -> list[str]:
        """URLs the page requested that are not file:, data:, about: or blob: (a self-contained page has none)."""
        urls = [e["params"]["request"]["url"] for e in self._page_events()
                if e.get("method") == "Network.requestWillBeSent"]
        return [u for u in urls if not u.startswith(LOCAL_SCHEMES)]

    def broken_images(self) -> list[dict]:
        """Every <img> that did not decode to a non-empty bitmap: its src (shortened), size and error."""
        return self.evaluate("""(async () => {
            const out = [];
            for (const img of Array.from(document.images)) {
                let err = null;
                try { await img.decode(); } catch (e) { err = String(e); }
                if (err || !img.complete || !(img.naturalWidth > 0) || !(img.naturalHeight > 0))
                    out.push({src: (img.currentSrc || img.src).slice(0, 80), alt: img.alt, complete: img.complete,
                              naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight, error: err});
            }
            return out;
        })()""")

    def screenshot(self, path: str | Path, *, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            w, h = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": w, "height": min(h, 16000),
                                                            "scale": 1})
        data = base64.b64decode(self.send("Page.captureScreenshot", params, timeout=60)["data"])
        path = Path(path)
        path.write_bytes(data)
        return path


def _kill(proc: subprocess.Popen) -> None:
    """End the browser and its helpers (its own process group, started with start_new_session)."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    else:   # the browser exited; its helpers may linger in the group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
