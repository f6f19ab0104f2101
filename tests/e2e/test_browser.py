#!/usr/bin/env python3
"""Headless-browser check of the demo's chat page, driven over the Chrome DevTools Protocol.

Usage: test_browser.py --page http://127.0.0.1:PORT/ [--chromium /usr/bin/chromium]
                       [--screenshot /tmp/chat.png]

Starts Debian's chromium headless with a fresh profile and --remote-debugging-port=0, speaks CDP
to it with the `websockets` client (no playwright, no downloaded browsers), opens the page in two
tabs, waits for both to say "connected", types a line into tab A's #line, clicks #send, and checks
that the line shows up exactly once in the #log of both tabs; then the same from tab B to tab A.
Saves a screenshot of tab A. Prints one `ok`/`FAIL` line per check; exits 1 on any failure.
"""

import argparse
import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from websockets.asyncio.client import connect

failures = 0


def report(ok, what, detail=""):
    global failures
    if ok:
        print(f"  ok   {what}")
    else:
        failures += 1
        print(f"  FAIL {what}{': ' + detail if detail else ''}")
    sys.stdout.flush()


class Cdp:
    """One browser-level CDP connection; pages are reached through flattened sessions."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            fut = self.pending.pop(msg.get("id"), None)
            if fut and not fut.done():
                fut.set_result(msg)

    async def call(self, method, params=None, session=None, timeout=10):
        i = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        msg = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send(json.dumps(msg))
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def eval(self, session, expr):
        r = await self.call("Runtime.evaluate",
                            {"expression": expr, "returnByValue": True, "awaitPromise": True},
                            session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate {expr!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, session, expr, timeout=10.0):
        """Poll a JS expression until it is truthy; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                v = await self.eval(session, expr)
            except RuntimeError:
                # The page may still be navigating (about:blank, or its context was just
                # replaced): that is "not yet", unless it lasts past the deadline.
                if time.monotonic() > deadline:
                    raise
                v = None
            if v or time.monotonic() > deadline:
                return v
            await asyncio.sleep(0.05)


LOG_LINES = "[...document.querySelectorAll('#log .msg')].map(d => d.textContent)"
STATUS = "document.getElementById('status')?.textContent"


async def open_tab(cdp, url):
    target = (await cdp.call("Target.createTarget", {"url": "about:blank"}))["targetId"]
    session = (await cdp.call("Target.attachToTarget",
                              {"targetId": target, "flatten": True}))["sessionId"]
    await cdp.call("Page.enable", {}, session)
    await cdp.call("Emulation.setDeviceMetricsOverride",
                   {"width": 900, "height": 640, "deviceScaleFactor": 1, "mobile": False}, session)
    await cdp.call("Page.navigate", {"url": url}, session)
    return target, session


async def type_and_send(cdp, session, text):
    """Like a user: focus #line, type the text, click the Send button with the mouse."""
    await cdp.call("Page.bringToFront", {}, session)
    await cdp.eval(session, "document.getElementById('line').focus()")
    await cdp.call("Input.insertText", {"text": text}, session)
    typed = await cdp.eval(session, "document.getElementById('line').value")
    rect = await cdp.eval(session, "(() => { const r = document.getElementById('send')"
                                   ".getBoundingClientRect(); return [r.x + r.width / 2,"
                                   " r.y + r.height / 2]; })()")
    for kind in ("mousePressed", "mouseReleased"):
        await cdp.call("Input.dispatchMouseEvent",
                       {"type": kind, "x": rect[0], "y": rect[1], "button": "left",
                        "clickCount": 1}, session)
    return typed


async def run(args, port_file):
    deadline = time.monotonic() + 20
    while not os.path.exists(port_file):
        if time.monotonic() > deadline:
            raise RuntimeError("chromium did not write DevToolsActivePort")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.05)
    port, path = open(port_file).read().split()[:2]
    async with connect(f"ws://127.0.0.1:{port}{path}", proxy=None, max_size=64 << 20,
                       ping_interval=None) as ws:
        cdp = Cdp(ws)
        version = await cdp.call("Browser.getVersion")
        print(f"  ({version['product']})")
        tabs = [await open_tab(cdp, args.page) for _ in range(2)]
        (ta, a), (tb, b) = tabs

        for name, s in (("A", a), ("B", b)):
            st = await cdp.wait_for(s, f"{STATUS} === 'connected' && {STATUS}")
            title = await cdp.eval(s, "document.title")
            report(st == "connected", f"tab {name} loads '{title}' and its WebSocket connects",
                   f"status {await cdp.eval(s, STATUS)!r}")

        for sender, (src, dst) in (("A", (a, b)), ("B", (b, a))):
            line = f"hello from tab {sender} ✓ 🐟 {os.getpid()}"
            typed = await type_and_send(cdp, src, line)
            report(typed == line, f"typed the line into tab {sender}'s #line", repr(typed))
            cleared = await cdp.wait_for(src, "document.getElementById('line').value === ''", 5)
            report(cleared, f"tab {sender}'s #send submits the form (input cleared)")
            check = f"{LOG_LINES}.filter(t => t === {json.dumps(line)}).length"
            for name, s in (("A", a), ("B", b)):
                n = await cdp.wait_for(s, check, 10)
                report(n == 1, f"line typed in tab {sender} appears once in tab {name}'s #log",
                       f"count {n}, log {await cdp.eval(s, LOG_LINES)}")

        # Settle, then nothing was duplicated: each tab's log is exactly the two lines.
        await asyncio.sleep(0.3)
        logs = [await cdp.eval(s, LOG_LINES) for s in (a, b)]
        report(logs[0] == logs[1] and len(logs[0]) == 2,
               "both tabs' logs hold exactly the 2 lines, in the same order", f"{logs}")

        await cdp.call("Page.bringToFront", {}, a)
        shot = await cdp.call("Page.captureScreenshot", {"format": "png"}, a)
        with open(args.screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        report(os.path.getsize(args.screenshot) > 1000, f"screenshot of tab A saved to {args.screenshot}")
        try:
            await cdp.call("Browser.close", timeout=3)
        except Exception:
            pass  # the connection may drop before the reply
        cdp.reader.cancel()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--page", required=True, help="http://host:port/ of the demo's chat page")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--screenshot", default="/tmp/chat.png")
    args = ap.parse_args()
    print(f"[browser] two tabs on {args.page}")
    profile = tempfile.mkdtemp(prefix="sockeye-e2e-chromium-")
    cmd = [args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}",
           "--no-proxy-server", "--disable-dev-shm-usage", "--mute-audio",
           "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
           "--disable-backgrounding-occluded-windows", "--remote-debugging-address=127.0.0.1",
           "--remote-debugging-port=0", "about:blank"]
    log = open(os.path.join(profile, "chromium.log"), "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def on_term(signum, _frame):  # e.g. from `timeout`: take the whole browser down with us
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(profile, ignore_errors=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        await asyncio.wait_for(run(args, os.path.join(profile, "DevToolsActivePort")), 60)
    except Exception as e:
        report(False, "browser test raised", f"{type(e).__name__}: {e}")
        log.flush()
        tail = open(os.path.join(profile, "chromium.log"), "rb").read()[-2000:]
        print("  chromium log tail:\n" + tail.decode(errors="replace"))
    finally:
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            pass
        try:  # chromium runs in its own process group: make sure no helper outlives the test
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
