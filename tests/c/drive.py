"""Drives the C ABI examples with real clients (Python `websockets`, plus a raw socket for the
bad frame). Used by tests/c/run.sh:

    python drive.py echo ws://127.0.0.1:PORT/echo    echo text + binary, close 1000 echoed,
                                                    a bad frame gets 1002, another path 404
    python drive.py chat ws://127.0.0.1:PORT/chat    3 clients each send a line; all get all 3
    python drive.py chat-http ws://.../chat          the same, and GET / answers 200 (chat.cpp)
    python drive.py rooms ws://127.0.0.1:PORT/       rooms.c: 404/400/403, subprotocol choice,
                                                    fan-out within a room, 1003, GET /
    python drive.py wss wss://127.0.0.1:PORT/echo CA.pem CN
                                                    tls.c: the certificate chains to CA.pem and
                                                    its subject CN is CN; echo text + binary
                                                    over TLS, close 1000 echoed

Prints one line per check (`ok NAME` / `FAIL NAME: why`) and exits 1 if any failed.
"""

import asyncio
import base64
import os
import socket
import ssl
import struct
import sys
from urllib.parse import urlparse

import websockets

TIMEOUT = 10
failures = 0


def report(name, ok, why=""):
    global failures
    if ok:
        print(f"ok {name}", flush=True)
    else:
        failures += 1
        print(f"FAIL {name}: {why}", flush=True)


async def check(name, coro):
    try:
        await asyncio.wait_for(coro, TIMEOUT)
        report(name, True)
    except Exception as e:  # noqa: BLE001 - any failure is the check's failure
        report(name, False, f"{type(e).__name__}: {e}")


async def echo_text(url):
    async with websockets.connect(url, max_size=None) as ws:
        for msg in ["hello", "", "ünïcödé ✓", "x" * 70000]:
            await ws.send(msg)
            got = await ws.recv()
            assert got == msg, f"sent {msg[:20]!r}, got {got[:20]!r}"


async def echo_binary(url):
    async with websockets.connect(url, max_size=None) as ws:
        for msg in [b"\x00\x01\x02\xff", b"", os.urandom(200000)]:
            await ws.send(msg)
            got = await ws.recv()
            assert got == msg, f"binary of {len(msg)} bytes came back as {len(got)} bytes"


async def echo_fragmented(url):
    async with websockets.connect(url) as ws:
        await ws.send(["frag", "ment", "ed"])
        got = await ws.recv()
        assert got == "fragmented", got


async def echo_close_1000(url):
    ws = await websockets.connect(url)
    await ws.send("bye")
    await ws.recv()
    await ws.close(1000, "done")
    rcvd = ws.protocol.close_rcvd
    assert rcvd is not None, "no close frame from the server"
    assert rcvd.code == 1000, f"server answered close with {rcvd.code}"


async def echo_many(url):
    conns = [await websockets.connect(url) for _ in range(20)]
    try:
        for i, ws in enumerate(conns):
            await ws.send(f"conn {i}")
        for i, ws in enumerate(conns):
            got = await ws.recv()
            assert got == f"conn {i}", got
    finally:
        for ws in conns:
            await ws.close()


def raw_handshake(url):
    u = urlparse(url)
    s = socket.create_connection((u.hostname, u.port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    status = head.split(b"\r\n", 1)[0]
    return s, status, head.split(b"\r\n\r\n", 1)[-1]


def read_close_code(s, rest):
    buf = rest
    while True:
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, off = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, off = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < off + n:
                break
            payload, buf = buf[off : off + n], buf[off + n :]
            if b0 & 0x0F == 8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        chunk = s.recv(4096)
        if not chunk:
            return None
        buf += chunk


async def echo_bad_frame(url):
    def run():
        s, status, rest = raw_handshake(url)
        try:
            assert b" 101 " in status + b" ", f"handshake answered {status!r}"
            # A masked text frame with RSV1 set and no extension negotiated: a protocol error.
            mask = os.urandom(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(b"bad"))
            s.sendall(bytes([0x80 | 0x40 | 0x1, 0x80 | 3]) + mask + data)
            code = read_close_code(s, rest)
            assert code == 1002, f"expected close 1002, got {code}"
        finally:
            s.close()

    await asyncio.get_running_loop().run_in_executor(None, run)


async def echo_unmasked_frame(url):
    def run():
        s, status, rest = raw_handshake(url)
        try:
            assert b" 101 " in status + b" ", f"handshake answered {status!r}"
            s.sendall(bytes([0x81, 3]) + b"bad")  # client frames must be masked
            code = read_close_code(s, rest)
            assert code == 1002, f"expected close 1002, got {code}"
        finally:
            s.close()

    await asyncio.get_running_loop().run_in_executor(None, run)


async def wrong_path_404(url):
    u = urlparse(url)
    bad = f"ws://{u.hostname}:{u.port}/nope"
    try:
        async with websockets.connect(bad):
            pass
    except websockets.exceptions.InvalidStatus as e:
        assert e.response.status_code == 404, e.response.status_code
        return
    raise AssertionError("connection to /nope was accepted")


async def chat_three(url):
    clients = [await websockets.connect(url) for _ in range(3)]
    try:
        await asyncio.sleep(0.2)  # let every on_open register its id
        lines = [f"line from {i}" for i in range(3)]
        for ws, line in zip(clients, lines):
            await ws.send(line)
        for i, ws in enumerate(clients):
            got = sorted([await ws.recv() for _ in range(3)])
            assert got == sorted(lines), f"client {i} got {got}"
    finally:
        for ws in clients:
            await ws.close()


async def chat_binary_refused(url):
    ws = await websockets.connect(url)
    await ws.send(b"\x01")
    try:
        await ws.recv()
    except websockets.exceptions.ConnectionClosed:
        pass
    rcvd = ws.protocol.close_rcvd
    assert rcvd is not None and rcvd.code == 1003, f"expected close 1003, got {rcvd}"


async def status_of(url, **kw):
    """The HTTP status a refused handshake got (fails if it was accepted)."""
    try:
        async with websockets.connect(url, **kw):
            pass
    except websockets.exceptions.InvalidStatus as e:
        return e.response.status_code
    raise AssertionError(f"{url} was accepted")


async def rooms_rejections(base):
    assert await status_of(base + "nope") == 404
    assert await status_of(base + "rooms/lobby") == 400, "no nick"
    assert await status_of(base + "rooms/a.b?nick=x") == 400, "bad room name"
    assert await status_of(base + "rooms/lobby?nick=eve", origin="http://evil.example") == 403
    assert await status_of(base + "rooms/x?nick=dave", subprotocols=["chat", "superchat"]) == 400
    u = urlparse(base)
    async with websockets.connect(
        base + "rooms/solo?nick=sam", origin=f"http://{u.hostname}:{u.port}"
    ) as ws:
        assert await ws.recv() == "* sam joined"


async def rooms_fan_out(base):
    alice = await websockets.connect(
        base + "rooms/lobby?nick=alice", subprotocols=["rooms.v1", "rooms.v2"]
    )
    bob = await websockets.connect(base + "rooms/lobby?nick=bob", subprotocols=["rooms.v1"])
    carol = await websockets.connect(base + "rooms/other?nick=carol")
    try:
        assert alice.subprotocol == "rooms.v2", alice.subprotocol
        assert bob.subprotocol == "rooms.v1", bob.subprotocol
        assert carol.subprotocol is None, carol.subprotocol
        assert await alice.recv() == "[lobby] * alice joined"
        assert await bob.recv() == "* bob joined"
        assert await alice.recv() == "[lobby] * bob joined"
        assert await carol.recv() == "* carol joined"
        await alice.send("hi")
        assert await alice.recv() == "[lobby] alice: hi"
        assert await bob.recv() == "alice: hi"
        await carol.send("anyone?")
        assert await carol.recv() == "carol: anyone?", "carol heard the lobby"
        await bob.send(b"\x01")
        try:
            await bob.recv()
        except websockets.exceptions.ConnectionClosed:
            pass
        assert bob.protocol.close_rcvd is not None and bob.protocol.close_rcvd.code == 1003
        assert await alice.recv() == "[lobby] * bob left"
    finally:
        for ws in (alice, bob, carol):
            await ws.close()


async def rooms_many(base):
    """20 members over the workers: every line reaches every member exactly once."""
    # Unbounded queues: a member closed late has the others' "left" notices unread before
    # its close frame (with the default 16 it would stop reading, and wait out its close).
    members = [
        await websockets.connect(base + f"rooms/big?nick=m{i}", max_queue=None) for i in range(20)
    ]
    try:
        for i, ws in enumerate(members):  # each sees its own join, then the later ones
            for j in range(i, 20):
                assert await ws.recv() == f"* m{j} joined"
        await members[0].send("to all")
        for ws in members:
            assert await ws.recv() == "m0: to all"
    finally:
        for ws in members:
            await ws.close()


def http_get(base, path):
    """The whole response to GET `path` (the server closes after it)."""
    u = urlparse(base)
    s = socket.create_connection((u.hostname, u.port), timeout=TIMEOUT)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        resp = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return resp
            resp += chunk
    finally:
        s.close()


async def chat_http(url):
    def run():
        resp = http_get(url, "/")
        assert resp.startswith(b"HTTP/1.1 200 OK\r\n"), resp[:60]
        assert b"\r\nCache-Control: no-store\r\n" in resp, resp
        assert resp.endswith(b"\r\n\r\nchat: connect to ws://HOST/chat\n"), resp[-60:]
        assert http_get(url, "/other").startswith(b"HTTP/1.1 400 ")

    await asyncio.get_running_loop().run_in_executor(None, run)


async def rooms_http(base):
    def run():
        u = urlparse(base)
        s = socket.create_connection((u.hostname, u.port), timeout=TIMEOUT)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            resp = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                resp += chunk
        finally:
            s.close()
        assert resp.startswith(b"HTTP/1.1 200 OK\r\n"), resp[:60]
        assert b"\r\nCache-Control: no-store\r\n" in resp, resp
        assert resp.endswith(b"rooms.v1)\n"), resp[-40:]

    await asyncio.get_running_loop().run_in_executor(None, run)


async def wss_echo(url, ca, cn):
    ctx = ssl.create_default_context(cafile=ca)  # verifies the chain and the host name
    async with websockets.connect(url, ssl=ctx, max_size=None) as ws:
        cert = ws.transport.get_extra_info("peercert")
        subject = dict(kv for rdn in cert["subject"] for kv in rdn)
        assert subject.get("commonName") == cn, f"served CN {subject.get('commonName')!r}, want {cn!r}"
        for msg in ["hello over TLS", "ünïcödé ✓", "x" * 70000, os.urandom(200000)]:
            await ws.send(msg)
            got = await ws.recv()
            assert got == msg, f"{len(msg)} sent, {len(got)} came back"
        await ws.close(1000)
        assert ws.close_code == 1000, f"close answered {ws.close_code}"


async def main(mode, url, *rest):
    if mode == "wss":
        ca, cn = rest
        await check(f"wss: certificate {cn!r} from the CA, echo, close 1000", wss_echo(url, ca, cn))
    elif mode == "echo":
        await check("echo text", echo_text(url))
        await check("echo binary", echo_binary(url))
        await check("echo fragmented", echo_fragmented(url))
        await check("echo 20 connections", echo_many(url))
        await check("close 1000 echoed", echo_close_1000(url))
        await check("bad frame (RSV1) gets 1002", echo_bad_frame(url))
        await check("unmasked frame gets 1002", echo_unmasked_frame(url))
        await check("other path gets 404", wrong_path_404(url))
    elif mode in ("chat", "chat-http"):
        await check("chat across 3 clients", chat_three(url))
        await check("chat relays again", chat_three(url))
        await check("chat refuses binary with 1003", chat_binary_refused(url))
        if mode == "chat-http":  # chat.cpp serves GET / too
            await check("chat answers GET / (on_http) with its header", chat_http(url))
    elif mode == "rooms":
        await check("rooms: 404, 400, 403 and the subprotocol 400", rooms_rejections(url))
        await check("rooms: subprotocol choice and fan-out in a room", rooms_fan_out(url))
        await check("rooms: 20 members over the workers", rooms_many(url))
        await check("rooms: GET / with its header", rooms_http(url))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    if len(sys.argv) != (5 if sys.argv[1:2] == ["wss"] else 3):
        raise SystemExit(__doc__)
    asyncio.run(main(*sys.argv[1:]))
    sys.exit(1 if failures else 0)
