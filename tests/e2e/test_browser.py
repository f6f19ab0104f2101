#!/usr/bin/env python3
"""Headless-browser check of the demo's chat page, driven over the Chrome DevTools Protocol.

Usage: test_browser.py --page http://127.0.0.1:PORT/ [--chromium /usr/bin/chromium]
                       [--screenshot /tmp/chat.png] [--backend epoll|io_uring]
       test_browser.py --page https://127.0.0.1:PORT/ --ca CA.pem [...]

With an https:// page the tabs load it over TLS and the page's WebSockets are wss:// (the page
picks the scheme from its own location); chromium is started with --ignore-certificate-errors
(a throwaway CA is not in its store), the page must report wss:// URLs, and the burst client
verifies the certificate against --ca.

Starts Debian's chromium headless with a fresh profile and --remote-debugging-port=0, speaks CDP
to it with the `websockets` client (no playwright, no downloaded browsers), opens the page in two
tabs, waits for both to say "connected", types a line into tab A's #line, clicks #send, and checks
that the line shows up exactly once in the #log of both tabs; then the same from tab B to tab A.
The page's live stats (its second WebSocket, to /stats) must arrive in both tabs, count the two
lines in their messages-in figure, and follow a burst of lines that a `websockets` client sends to
another room (/chat?room=...): the messages-in figure grows by the burst, the in/s figure and the
chart move, and neither the burst nor any stats JSON reaches the tabs' #log. Saves a screenshot of
tab A. Prints one `ok`/`FAIL` line per check; exits 1 on any failure.
"""

import argparse
import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import ssl
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
LOAD_LINES = 100  # lines the burst sends, one every 20 ms
# Blue pixels (the in/s line, #2a7ae2) on the stats chart.
CHART_BLUE = ("(() => { const c = document.getElementById('chart'); if (!c.width) return 0;"
              " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
              " let n = 0; for (let i = 0; i < d.length; i += 4)"
              " if (d[i + 3] > 128 && d[i + 2] > 150 && d[i] < 100) n++; return n; })()")


def stat(name):
    """JS: the number in the page's #stat-NAME, or null while it shows none."""
    return (f"(() => {{ const t = document.getElementById('stat-{name}')?.textContent;"
            f" const v = Number(t); return t && t !== '–' && Number.isFinite(v) ? v : null; }})()")


async def burst(url, lines, tls=None):
    """Sends `lines` lines to a room of its own, reading each back (the sender is a member)."""
    async with connect(url, proxy=None, ping_interval=None, ssl=tls) as ws:
        for i in range(lines):
            await ws.send(f"load line {i}")
            await asyncio.wait_for(ws.recv(), 10)
            await asyncio.sleep(0.02)


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
            ext = await cdp.eval(s, "document.getElementById('status').dataset.extensions")
            report(isinstance(ext, str) and ext.startswith("permessage-deflate"),
                   f"tab {name} negotiated permessage-deflate", f"extensions {ext!r}")

        # The live stats arrive in both tabs (once a second), on the page's own ids.
        for name, s in (("A", a), ("B", b)):
            got = await cdp.wait_for(s, f"{stat('in')} !== null && {stat('workers')}", 5)
            backend = await cdp.eval(s, "document.getElementById('stat-backend').textContent")
            known = ("epoll", "io_uring")
            want = (args.backend,) if args.backend in known else known
            report(bool(got) and backend in want,
                   f"tab {name} shows the live stats (backend {backend}, {got} workers)",
                   f"messages in {await cdp.eval(s, stat('in'))!r}, backend {backend!r}")
        in_before = await cdp.eval(a, stat("in"))

        if args.page.startswith("https://"):
            for name, s in (("A", a), ("B", b)):
                proto = await cdp.eval(s, "location.protocol")
                report(proto == "https:", f"tab {name} loaded the page over https", repr(proto))
            # Both of the page's WebSockets (its top-level `ws` and `stats`) are wss:// and open.
            sockets = await cdp.eval(a, "[ws, stats].map(w => [w.url, w.readyState])")
            report(bool(sockets) and all(u.startswith("wss://") and st == 1 for u, st in sockets),
                   "the page's chat and stats WebSockets are open wss:// ones", f"{sockets}")

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

        # The two lines show in the messages-in figure within a stats period or two.
        if in_before is not None:
            n = await cdp.wait_for(a, f"{stat('in')} >= {in_before + 2} && {stat('in')}", 5)
            report(bool(n), "tab A's messages-in figure counts the 2 chat lines",
                   f"{in_before} before, {await cdp.eval(a, stat('in'))} now")

        # A burst to another room: the figures move, the tabs' logs do not.
        in_start = await cdp.eval(a, stat("in"))
        ws_base = args.page.replace("http", "ws", 1).rstrip("/")  # https:// -> wss://
        tls = ssl.create_default_context(cafile=args.ca) if args.page.startswith("https") else None
        load = asyncio.create_task(burst(f"{ws_base}/chat?room=e2e-load-{os.getpid()}",
                                         LOAD_LINES, tls))
        max_rate, blue = 0.0, 0
        while not load.done():
            max_rate = max(max_rate, await cdp.eval(a, stat("in-rate")) or 0.0)
            blue = max(blue, await cdp.eval(a, CHART_BLUE) or 0)
            await asyncio.sleep(0.2)
        try:
            await load
            report(True, f"a websockets client sent {LOAD_LINES} lines to another room and got "
                         "each back")
        except Exception as e:
            report(False, f"a websockets client sends {LOAD_LINES} lines to another room",
                   f"{type(e).__name__}: {e}")
        if in_start is not None:
            want = in_start + LOAD_LINES
            n = await cdp.wait_for(a, f"{stat('in')} >= {want} && {stat('in')}", 5)
            report(bool(n), f"tab A's messages-in figure grows by the {LOAD_LINES} lines",
                   f"{in_start} before, {await cdp.eval(a, stat('in'))} now, want >= {want}")
        deadline = time.monotonic() + 3
        while max_rate <= 0 and time.monotonic() < deadline:
            max_rate = max(max_rate, await cdp.eval(a, stat("in-rate")) or 0.0)
            await asyncio.sleep(0.2)
        report(max_rate > 0, f"tab A's in/s figure moves under load (up to {max_rate}/s)")
        blue = max(blue, await cdp.eval(a, CHART_BLUE) or 0)
        samples = int(await cdp.eval(a, "document.getElementById('chart').dataset.samples") or 0)
        report(samples >= 3 and blue > 20,
               f"tab A's chart draws the in/s line ({samples} samples, {blue} line pixels)")
        logs = [await cdp.eval(s, LOG_LINES) for s in (a, b)]
        stray = [t for log in logs for t in log if t.startswith("{") or t.startswith("load line")]
        report(logs[0] == logs[1] and len(logs[0]) == 2 and not stray,
               "the tabs' logs still hold the 2 lines only (no stats JSON, no other room's lines)",
               f"{logs}")

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
    ap.add_argument("--page", required=True,
                    help="http://host:port/ or https://host:port/ of the demo's chat page")
    ap.add_argument("--ca", help="https://: the PEM file of the CA that signed the demo's certificate")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--screenshot", default="/tmp/chat.png")
    ap.add_argument("--backend", help="the backend the page's stats must name")
    args = ap.parse_args()
    if args.page.startswith("https://") and not args.ca:
        ap.error("an https:// page needs --ca")
    print(f"[browser] two tabs on {args.page}")
    profile = tempfile.mkdtemp(prefix="sockeye-e2e-chromium-")
    cmd = [args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}",
           "--no-proxy-server", "--disable-dev-shm-usage", "--mute-audio",
           "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
           "--disable-backgrounding-occluded-windows", "--remote-debugging-address=127.0.0.1",
           "--remote-debugging-port=0"]
    if args.page.startswith("https://"):
        cmd.append("--ignore-certificate-errors")  # the test CA is in no store chromium reads
    cmd.append("about:blank")
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
