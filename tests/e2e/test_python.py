#!/usr/bin/env python3
"""End-to-end checks of the sockeye demo server with the Python `websockets` client.

Usage: test_python.py --base ws://127.0.0.1:PORT [--suite echo|chat|close ...] [--label NAME]
       test_python.py --base wss://127.0.0.1:PORT --ca CA.pem [--suite ...]

With a wss:// base every connection is TLS, verified against the CA in --ca (the certificate
must name 127.0.0.1), and the suites are the same.

Suites (default: all three):
  echo   /echo returns every text and binary message unchanged: sizes across the 7/16/64-bit
         length boundaries up to 4 MiB, multi-byte UTF-8, a fragmented message, 200 pipelined
         messages in order, and a ping answered by a pong.
  chat   4 clients on /chat; every line any of them sends reaches all 4 (sender included),
         exactly once, in each sender's order; then the same with 16 clients, so that the
         relay crosses workers (SO_REUSEPORT spreads connections) with near certainty; then
         rooms (/chat?room=NAME): a line reaches its own room only, and a bad room name
         (empty, a character outside [A-Za-z0-9_-], over 64 bytes, `room` twice) gets 400.
  close  close handshakes: client 1000 -> server echoes 1000; client 4000 -> 4000;
         binary on /chat -> server closes 1003; an unknown path is refused with 404.

Prints one `ok`/`FAIL` line per check; exits 1 if any check failed.
"""

import argparse
import asyncio
import os
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

TIMEOUT = 10.0  # seconds for any single receive / handshake
MAX_SIZE = 16 << 20  # the engine's default max message size

failures = 0
TLS = None  # the ssl.SSLContext for wss:// (from --ca), None for ws://


def report(ok, what, detail=""):
    global failures
    if ok:
        print(f"  ok   {what}")
    else:
        failures += 1
        print(f"  FAIL {what}{': ' + detail if detail else ''}")
    sys.stdout.flush()


def ws_connect(url, **kw):
    # proxy=None: never pick up *_PROXY from the environment; compression=None: the engine
    # does not negotiate permessage-deflate yet, and we want plain frames on the wire.
    if url.startswith("wss://"):
        kw["ssl"] = TLS
    return connect(url, proxy=None, compression=None, max_size=MAX_SIZE,
                   open_timeout=TIMEOUT, close_timeout=TIMEOUT, ping_interval=None, **kw)


def tls_context(ca_file):
    """A client context that trusts only `ca_file` and checks the host name, as a browser does."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def text_of(n):
    """A str of exactly n code points mixing 1-, 2-, 3- and 4-byte UTF-8 sequences."""
    unit = "sockeye é ✓ 🐟 "
    return (unit * (n // len(unit) + 1))[:n]


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def suite_echo(base):
    url = base + "/echo"
    async with ws_connect(url) as ws:
        for n in (0, 1, 125, 126, 127, 1000, 65535, 65536, 65537, 1 << 20, 4 << 20):
            msg = text_of(n)
            await ws.send(msg)
            got = await recv(ws)
            report(isinstance(got, str) and got == msg,
                   f"echo text {n} chars ({len(msg.encode())} bytes)",
                   f"got {type(got).__name__} of len {len(got)}")
        for n in (0, 1, 125, 126, 127, 1000, 65535, 65536, 65537, 1 << 20, 4 << 20):
            msg = os.urandom(n)
            await ws.send(msg)
            got = await recv(ws)
            report(isinstance(got, bytes) and got == msg, f"echo binary {n} bytes",
                   f"got {type(got).__name__} of len {len(got)}")

        # A fragmented text message (first frame + 2 continuations) comes back whole.
        parts = ["frag-one ", "frag-two ✓ ", "frag-three 🐟"]
        await ws.send(parts)
        got = await recv(ws)
        report(got == "".join(parts), "echo fragmented text message (3 frames)", repr(got)[:80])

        # Pipelined: send 200 messages before reading any; all come back in order.
        msgs = [f"pipelined #{i} " + "x" * (i * 37 % 3000) for i in range(200)]
        for m in msgs:
            await ws.send(m)
        got = [await recv(ws) for _ in msgs]
        report(got == msgs, "echo 200 pipelined messages in order")

        # Ping -> pong with the same payload (websockets matches it and resolves the waiter).
        pong = await ws.ping(b"are-you-there")
        latency = await asyncio.wait_for(pong, TIMEOUT)
        report(True, f"ping answered by pong ({latency * 1000:.1f} ms)")

        await ws.close(1000)
        report(ws.close_code == 1000, "echo connection closes cleanly", f"code {ws.close_code}")


async def suite_chat(base, clients=4, lines=5):
    url = base + "/chat"
    conns = [await ws_connect(url).__aenter__() for _ in range(clients)]
    try:
        # Every client sends its lines; every client must see all clients * lines of them.
        expected = [f"client{c} line{i} ✓" for c in range(clients) for i in range(lines)]
        for i in range(lines):
            for c, ws in enumerate(conns):
                await ws.send(f"client{c} line{i} ✓")
        ok_quiet = 0
        for c, ws in enumerate(conns):
            got = []
            try:
                while len(got) < len(expected):
                    got.append(await recv(ws))
            except (asyncio.TimeoutError, ConnectionClosed) as e:
                report(False, f"chat({clients}) client{c} receives {len(expected)} lines",
                       f"got {len(got)} then {type(e).__name__}")
                continue
            same_set = sorted(got) == sorted(expected)
            # Per-sender order: lines from one sender arrive in the order they were sent.
            in_order = all([g for g in got if g.startswith(f"client{s} ")] ==
                           [e for e in expected if e.startswith(f"client{s} ")]
                           for s in range(clients))
            if clients <= 4 or not (same_set and in_order):
                report(same_set and in_order,
                       f"chat({clients}) client{c} receives all {len(expected)} lines "
                       "(own included), each sender in order", f"got {got[:6]}...")
            else:
                ok_quiet += 1
        if ok_quiet:
            report(True, f"chat({clients}) {ok_quiet} clients each receive all {len(expected)} "
                         "lines (own included), each sender in order")
        # Nothing extra (no duplicates) arrives afterwards.
        async def one_more(ws):
            try:
                await asyncio.wait_for(ws.recv(), 0.3)
                return 1
            except asyncio.TimeoutError:
                return 0

        extra = sum(await asyncio.gather(*(one_more(ws) for ws in conns)))
        report(extra == 0, f"chat({clients}) delivers no duplicate lines", f"{extra} extra")
    finally:
        for ws in conns:
            await ws.close()


async def suite_close(base):
    for code, reason in ((1000, "bye"), (4000, "app-defined")):
        async with ws_connect(base + "/echo") as ws:
            await ws.send("before close")
            await recv(ws)
            await ws.close(code, reason)
            rcvd = ws.protocol.close_rcvd
            report(rcvd is not None and rcvd.code == code,
                   f"client closes {code} -> server echoes {code}",
                   f"server sent {rcvd}")

    async with ws_connect(base + "/chat") as ws:
        await ws.send(b"\x00binary")
        try:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
            report(False, "binary on /chat -> server closes 1003", "got a message instead")
        except ConnectionClosed:
            rcvd = ws.protocol.close_rcvd
            report(rcvd is not None and rcvd.code == 1003,
                   "binary on /chat -> server closes 1003", f"server sent {rcvd}")

    try:
        async with ws_connect(base + "/no-such-path"):
            report(False, "unknown path is refused with 404", "handshake succeeded")
    except InvalidStatus as e:
        status = e.response.status_code
        report(status == 404, "unknown path is refused with 404", f"status {status}")


async def suite_rooms(base):
    tag = os.getpid()
    rooms = [f"e2e-{tag}-a", f"e2e-{tag}-b"]
    # 4 members per room: with 2 workers each room almost surely spans both.
    conns = {r: [await ws_connect(f"{base}/chat?room={r}").__aenter__() for _ in range(4)]
             for r in rooms}
    try:
        for r in rooms:
            await conns[r][0].send(f"hello {r}")
        for r in rooms:
            got = []
            for ws in conns[r]:
                got.append(await recv(ws))
            report(got == [f"hello {r}"] * 4,
                   f"a line to room {r[-1]} reaches its 4 members (sender included)", f"{got}")

        async def one_more(ws):
            try:
                return [await asyncio.wait_for(ws.recv(), 0.3)]
            except asyncio.TimeoutError:
                return []

        extra = [m for ws in conns[rooms[0]] + conns[rooms[1]] for m in await one_more(ws)]
        report(not extra, "no line crosses into the other room", f"{extra}")
    finally:
        for ws in conns[rooms[0]] + conns[rooms[1]]:
            await ws.close()
    for query, what in (("?room=", "an empty room name"), ("?room=bad!name", "a '!' in it"),
                        ("?room=" + "x" * 65, "65 bytes"), ("?room=a&room=b", "room twice")):
        try:
            async with ws_connect(base + "/chat" + query):
                report(False, f"/chat with {what} is refused with 400", "handshake succeeded")
        except InvalidStatus as e:
            status = e.response.status_code
            report(status == 400, f"/chat with {what} is refused with 400", f"status {status}")
    async with ws_connect(f"{base}/chat?room={'y' * 64}") as ws:
        await ws.send("64")
        report(await recv(ws) == "64", "/chat with a 64-byte room name is accepted")


async def suite_chat_all(base):
    await suite_chat(base, clients=4, lines=5)
    # 16 clients: with SO_REUSEPORT spreading connections over the workers, the chance that
    # all 16 land on one of 2 workers is 2^-15, so this run crosses workers for certain.
    await suite_chat(base, clients=16, lines=2)
    await suite_rooms(base)


SUITES = {"echo": suite_echo, "chat": suite_chat_all, "close": suite_close}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True,
                    help="ws://host:port or wss://host:port of the demo (or a proxy)")
    ap.add_argument("--ca", help="wss://: the PEM file of the CA that signed the demo's certificate")
    ap.add_argument("--suite", action="append", choices=sorted(SUITES))
    ap.add_argument("--label", default="python")
    args = ap.parse_args()
    global TLS
    if args.base.startswith("wss://"):
        if not args.ca:
            ap.error("a wss:// base needs --ca")
        TLS = tls_context(args.ca)
    for name in args.suite or ["echo", "chat", "close"]:
        print(f"[{args.label}] {name} via {args.base}")
        try:
            await asyncio.wait_for(SUITES[name](args.base), 60)
        except Exception as e:  # any unexpected error is a failure, not a crash
            report(False, f"{name} suite raised", f"{type(e).__name__}: {e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
