#!/usr/bin/env python3
"""Memory per idle connection, ws:// against wss://, measured end to end.

Opens N WebSocket connections to a running server, sends one short message on each (so every
connection has done real traffic, as an idle chat client has), waits for the echoes, then
reads the server's RSS. Run it once before any connection (N=0) and once with N, or let it
do both: it prints the RSS before, after, and the difference per connection.

    python3 benches/tls_idle.py --url wss://127.0.0.1:9443/echo --ca ca.pem --pid PID -n 2000

Needs Python `websockets` (tests/e2e's venv has it).
"""

import argparse
import asyncio
import ssl
import time

import websockets


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--ca", help="CA certificate (PEM) for wss://")
    ap.add_argument("--pid", type=int, required=True, help="the server's process id")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading RSS")
    a = ap.parse_args()
    ctx = None
    if a.url.startswith("wss://"):
        ctx = ssl.create_default_context(cafile=a.ca)
    before = rss(a.pid)
    conns = []
    for i in range(a.n):
        ws = await websockets.connect(a.url, ssl=ctx, compression=None, max_size=None,
                                      ping_interval=None)
        await ws.send(f"hello {i}")
        assert await ws.recv() == f"hello {i}"
        conns.append(ws)
    time.sleep(a.settle)
    after = rss(a.pid)
    per = (after - before) / max(a.n, 1)
    print(f"url={a.url} n={a.n} rss_before={before} rss_after={after} per_conn={per:.0f}")
    for ws in conns:
        await ws.close()


asyncio.run(main())
