#!/usr/bin/env python3
"""Fault injection against the sockeye demo (engine/examples/demo.rs), standard library only.

Every scenario starts a fresh demo (2 workers, short timeouts) on a free loopback port, on each
backend, hurts it with raw sockets, and then checks that the demo returns to its baseline within
the configured timeouts plus a few seconds of slack:

  - its descriptor count (/proc/PID/fd) is back where it was,
  - `sockeye_connections` from /metrics, summed over workers, is 0 (1 is allowed: the /metrics
    request's own connection may count itself) and `sockeye_memory_in_use` is back to baseline,
  - io_uring: `sockeye_buffers_in_kernel` equals `sockeye_buffers_total` (no buffer held),
  - its RSS is within RSS_SLACK of baseline,
  - a fresh client still echoes on /echo (text and binary, then a clean close 1000),
  - the demo is still running.

The scenarios: /metrics format; big message + close, never read; zero-window readers; slowloris;
resets mid-message; EMFILE; handler panics (--chaos); bad input to a wss:// demo (--tls with a
throwaway CA's certificate from tests/tls/make-certs.sh, so `openssl` is needed): plaintext HTTP
gets a 400 naming TLS, a truncated ClientHello is dropped at the handshake timeout, openssl
s_client offering only TLS 1.1 or an illegal SNI name fails cleanly, while a wss:// client keeps
echoing (every client of that demo, the baseline's and /metrics included, speaks TLS). One line
per scenario and backend, `ok` or `FAILED: what did not return`; exits 1 if any failed.

    tests/faults/faults.py --demo target/release/examples/demo [--backends "epoll io_uring"]
        [--only NAME ...]
"""

import argparse
import base64
import hashlib
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WORKERS = 2
IDLE, CLOSE, HANDSHAKE = 3.0, 2.0, 2.0  # seconds, given to every demo
SLACK = 3.0  # seconds on top of the configured timeouts
RSS_SLACK = 16 << 20
MEM_SLACK = 64 << 10  # sockeye_memory_in_use: a /metrics response in flight, no more
NOFILE = 256  # the demo's descriptor limit in the EMFILE scenario
COMMON = ["--workers", str(WORKERS), "--idle-timeout", str(IDLE), "--close-timeout", str(CLOSE),
          "--handshake-timeout", str(HANDSHAKE)]
GAUGES = {"connections", "memory_in_use", "buffers_total", "buffers_in_kernel", "subscriptions"}
FIELDS = ["connections", "buffers_total", "buffers_in_kernel", "buffer_shortages",
          "memory_in_use", "handshake_timeouts", "idle_timeouts", "close_timeouts",
          "handler_panics", "sends_dropped", "budget_refusals", "protocol_errors",
          "messages_in", "messages_out", "deliveries", "publish_drops", "backpressure_closes",
          "subscriptions", "bad_handshakes", "tls_handshakes", "tls_errors", "cluster_published",
          "cluster_received", "cluster_queue_drops", "cluster_lost", "cluster_reconnects",
          "cluster_inbound_drops"]
GENERIC_HELP = "A sockeye per-worker counter."  # the demo's HELP for a field it has no text for
HERE = os.path.dirname(os.path.abspath(__file__))
CERTS = {}  # "@CERT@", "@KEY@", "@CA@" -> files, made by main() when a TLS scenario runs
TLS_CLIENT = None  # the ssl.SSLContext every client uses while the demo under test is wss://


class Failure(Exception):
    pass


# ------------------------------------------------------------------------------ the client --

def mask(payload, key):
    n = len(payload)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def frame(op, payload, fin=True, length=None):
    """A masked client frame; `length` overrides the header's payload length (half frames)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | op
    if n < 126:
        hdr = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, 0x80 | 127, n)
    key = os.urandom(4)
    return hdr + key + mask(payload, key)


def close_frame(code, reason=b""):
    return frame(0x8, struct.pack("!H", code) + reason)


def upgrade_request(port, path, key):
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def dial(port, timeout=5.0, rcvbuf=None):
    """A connected socket to the demo: TLS (verified against the test CA) while TLS_CLIENT is
    set, plain TCP otherwise."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    if TLS_CLIENT is not None:
        try:
            sock = TLS_CLIENT.wrap_socket(sock, server_hostname="localhost")
        except OSError:
            sock.close()
            raise
    return sock


class Ws:
    """A blocking WebSocket client on a raw socket (TLS while TLS_CLIENT is set)."""

    def __init__(self, port, path="/echo", rcvbuf=None, timeout=5.0):
        self.sock = dial(port, timeout, rcvbuf)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(upgrade_request(port, path, key))
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise Failure(f"{path}: connection closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            raise Failure(f"{path}: handshake answered {lines[0]!r}")
        want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        accept = [l.split(":", 1)[1].strip() for l in lines[1:]
                  if l.lower().startswith("sec-websocket-accept:")]
        if accept != [want]:
            raise Failure(f"{path}: bad Sec-WebSocket-Accept {accept}")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self):
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8))
        if b1 & 0x80:
            raise Failure("server sent a masked frame")
        return b0 & 0x0F, self._read(n)

    def recv_message(self):
        """The next data message as (opcode, payload); pings are answered, a close raises."""
        while True:
            op, payload = self.recv_frame()
            if op == 0x9:
                self.sock.sendall(frame(0xA, payload))
            elif op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise Failure(f"closed by the server with {code}")
            elif op in (0x1, 0x2):
                return op, payload

    def echo(self, op, payload):
        self.sock.sendall(frame(op, payload))
        got = self.recv_message()
        if got != (op, payload):
            raise Failure(f"echo of {len(payload)} bytes came back as {got[0]}/{len(got[1])}")

    def close(self, code=1000):
        """Close handshake: sends ours, expects the server's code, then EOF."""
        self.sock.sendall(close_frame(code))
        while True:
            op, payload = self.recv_frame()
            if op == 0x8:
                break
        got = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        if got != code:
            raise Failure(f"close answered with {got}, not {code}")
        if self.sock.recv(1) != b"":
            raise Failure("data after the close frame")
        self.sock.close()


def fresh_echo(port):
    c = Ws(port, "/echo")
    c.echo(0x1, f"still here {random.random()}".encode())
    c.echo(0x2, os.urandom(3000))
    c.close(1000)


def http_get(port, path, timeout=5.0):
    s = dial(port, timeout)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/1.1 ") else 0
    return status, headers, body.decode()


SAMPLE = re.compile(r'^(sockeye_[a-z_]+)\{worker="(\d+)"\} (\d+)$')


def parse_metrics(text, strict=False):
    """{family: {worker: value}}. strict: every line is checked against the exposition format
    the demo promises (HELP, then TYPE, then one sample per worker, for each field)."""
    out, problems, helped, typed = {}, [], set(), {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            parts = line.split(" ", 3)
            if len(parts) < 4 or not parts[3]:
                problems.append(f"empty HELP: {line!r}")
            helped.add(parts[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if name not in helped:
                problems.append(f"TYPE before HELP for {name}")
            typed[name] = kind
        else:
            m = SAMPLE.match(line)
            if not m:
                problems.append(f"not a sample line: {line!r}")
                continue
            name, worker, value = m.group(1), int(m.group(2)), int(m.group(3))
            if name not in typed:
                problems.append(f"sample before TYPE: {name}")
            if worker in out.setdefault(name, {}):
                problems.append(f"duplicate sample {name} worker {worker}")
            out[name][worker] = value
    if strict:
        if not text.endswith("\n"):
            problems.append("body does not end with a newline")
        for f in FIELDS:
            fam = f"sockeye_{f}" if f in GAUGES else f"sockeye_{f}_total"
            kind = "gauge" if f in GAUGES else "counter"
            if typed.get(fam) != kind:
                problems.append(f"{fam}: TYPE {typed.get(fam)!r}, want {kind}")
            if f"# HELP {fam} {GENERIC_HELP}\n" in text:
                problems.append(f"{fam}: the demo has no HELP text for it")
            if sorted(out.get(fam, {})) != list(range(WORKERS)):
                problems.append(f"{fam}: workers {sorted(out.get(fam, {}))}, want 0..{WORKERS - 1}")
        extra = set(out) - {f"sockeye_{f}" if f in GAUGES else f"sockeye_{f}_total" for f in FIELDS}
        if extra:
            problems.append(f"unexpected families {sorted(extra)}")
        if problems:
            raise Failure("; ".join(problems[:5]))
    return out


# -------------------------------------------------------------------------------- the demo --

def free_port():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port != 9001:
            return port


class Demo:
    def __init__(self, binary, backend, flags, nofile=None):
        self.binary, self.backend, self.flags, self.nofile = binary, backend, flags, nofile
        self.proc = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"sockeye-faults-{backend}-", suffix=".log",
                                               delete=False)

    def start(self):
        for _ in range(3):
            self.port = free_port()
            # No backtraces: symbolizing the first one maps the binary's debug info (tens of
            # MiB of RSS that stay), which the RSS check would read as a leak.
            env = dict(os.environ, SOCKEYE_BACKEND=self.backend, RUST_BACKTRACE="0")
            limit = self.nofile
            pre = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))) if limit else None
            self.log.seek(0)
            self.log.truncate()
            self.proc = subprocess.Popen(
                [self.binary, "--addr", f"127.0.0.1:{self.port}", "--backend", self.backend,
                 *self.flags], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=pre)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.05)
            self.stop()
        raise Failure(f"demo did not start: {self.log_tail()}")

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise Failure("no VmRSS")

    def cpu(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self):
        status, headers, body = http_get(self.port, "/metrics")
        if status != 200:
            raise Failure(f"/metrics answered {status}")
        return headers, body

    def stats(self):
        return parse_metrics(self.metrics()[1])

    def total(self, family):
        return sum(self.stats().get(family, {}).values())

    def log_tail(self, n=6):
        self.log.flush()
        with open(self.log.name, errors="replace") as f:
            lines = f.read().splitlines()
        return " | ".join(lines[-n:])

    def backend_logged(self):
        # The port accepts before the demo has logged its "listening" line: give it a moment.
        deadline = time.monotonic() + 2
        while True:
            with open(self.log.name, errors="replace") as f:
                m = re.search(r"workers, (\w+)\)", f.read())
            if m or time.monotonic() > deadline or not self.alive():
                return m.group(1) if m else None
            time.sleep(0.05)

    def stop(self):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def remove_log(self):
        os.unlink(self.log.name)


def warm_up(port, clients=8, rounds=32, size=64 << 10):
    """Echoes 16 MiB in 64 KiB messages over 8 connections (both workers, almost surely), so
    that the baseline RSS already holds what steady traffic makes resident for good: on
    io_uring every page of the provided-buffer rings (128 x 64 KiB per worker), and the
    allocator's working set."""
    conns = [Ws(port, "/echo") for _ in range(clients)]
    payload = os.urandom(size)
    data = frame(0x2, payload)
    for _ in range(rounds):
        for c in conns:
            c.sock.sendall(data)
        for c in conns:
            if c.recv_message() != (0x2, payload):
                raise Failure("warm-up echo differs")
    for c in conns:
        c.close(1000)


def baseline(demo):
    """A warm-up, a first echo, then the demo at rest."""
    warm_up(demo.port)
    fresh_echo(demo.port)
    time.sleep(0.3)
    fds = []
    for _ in range(3):  # the last /metrics connection may still be closing
        fds.append(demo.fds())
        time.sleep(0.05)
    fds = min(fds)
    stats = demo.stats()
    mem = sum(stats.get("sockeye_memory_in_use", {}).values())
    return {"fds": fds, "mem": mem, "rss": demo.rss()}


def back_to_baseline(demo, base, within):
    """Polls until fds, connections, memory_in_use and RSS are back (each seen at baseline at
    least once), for at most `within` seconds. Returns what did not come back."""
    deadline = time.monotonic() + within
    seen = {}
    ok = set()
    while True:
        if not demo.alive():
            return ["demo exited before returning to baseline"]
        try:
            fds = demo.fds()
            seen["fds"] = fds
            if fds <= base["fds"]:
                ok.add("fds")
            stats = demo.stats()
            conns = sum(stats.get("sockeye_connections", {}).values())
            seen["connections"] = conns
            if conns <= 1:
                ok.add("connections")
            mem = sum(stats.get("sockeye_memory_in_use", {}).values())
            seen["memory_in_use"] = mem
            if mem <= base["mem"] + MEM_SLACK:
                ok.add("memory_in_use")
            lent = sum(stats.get("sockeye_buffers_in_kernel", {}).values())
            ring = sum(stats.get("sockeye_buffers_total", {}).values())
            seen["buffers"] = (lent, ring)
            if lent == ring:  # io_uring: every provided buffer back in the kernel's hands
                ok.add("buffers")
            rss = demo.rss()
            seen["rss"] = rss
            if rss <= base["rss"] + RSS_SLACK:
                ok.add("rss")
        except (OSError, Failure) as e:
            seen["metrics"] = f"error {e}"
        if len(ok) == 5:
            NOTES.append(f"back in {within - (deadline - time.monotonic()):.1f} s")
            return []
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    want = {"fds": f"fds {seen.get('fds')} (baseline {base['fds']})",
            "connections": f"connections {seen.get('connections')} (want <= 1)",
            "memory_in_use": f"memory_in_use {seen.get('memory_in_use')} (baseline {base['mem']})",
            "buffers": "buffers_in_kernel %s of buffers_total %s" % seen.get("buffers", (None, None)),
            "rss": f"RSS {seen.get('rss', 0) >> 20} MiB (baseline {base['rss'] >> 20} MiB + "
                   f"{RSS_SLACK >> 20})"}
    out = [want[k] for k in want if k not in ok]
    if "metrics" in seen and "connections" not in ok:
        out.append(f"/metrics: {seen['metrics']}")
    return [f"not back within {within:.0f} s: " + ", ".join(out)]


# ------------------------------------------------------------------------------- scenarios --
# Each takes the demo and its baseline, returns (problems, seconds to allow for the return to
# baseline). Sockets it leaves open are held until the baseline check is over.

HELD = []
NOTES = []  # what a scenario measured, printed after its verdict


def sc_metrics(demo, base):
    problems = []
    status, headers, body = http_get(demo.port, "/metrics")
    if status != 200:
        return [f"/metrics answered {status}"], SLACK
    if headers.get("content-type") != "text/plain; version=0.0.4":
        problems.append(f"Content-Type {headers.get('content-type')!r}")
    try:
        parse_metrics(body, strict=True)
    except Failure as e:
        problems.append(f"format: {e}")
    # The gauge follows real connections.
    clients = [Ws(demo.port, "/echo") for _ in range(6)]
    deadline, conns = time.monotonic() + 3, None
    while time.monotonic() < deadline:
        conns = demo.total("sockeye_connections")
        if conns >= len(clients):
            break
        time.sleep(0.1)
    if conns is None or conns < len(clients):
        problems.append(f"sockeye_connections {conns} with {len(clients)} clients open")
    for c in clients:
        c.close(1000)
    return problems, SLACK


def sc_big_close(demo, base):
    """8 MiB binary frame + close(1000), never read, socket held open."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(("127.0.0.1", demo.port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(upgrade_request(demo.port, "/echo", key))
    head = b""
    while b"\r\n\r\n" not in head:  # the 101 alone: nothing after it is ever read
        b = s.recv(1)
        if not b:
            return ["connection closed during the handshake"], SLACK
        head += b
    if not head.startswith(b"HTTP/1.1 101"):
        return [f"handshake answered {head[:30]!r}"], SLACK
    data = frame(0x2, os.urandom(8 << 20)) + close_frame(1000)
    s.setblocking(False)
    sent, stall_until = 0, time.monotonic() + 10
    while sent < len(data) and time.monotonic() < stall_until:
        select.select([], [s], [], 0.5)
        try:
            n = s.send(data[sent:sent + (1 << 20)])
            sent += n
            stall_until = time.monotonic() + 3  # the server stopped reading for 3 s: stop
        except BlockingIOError:
            pass
        except OSError:
            break
    HELD.append(s)
    NOTES.append(f"wrote {sent} of {len(data)} bytes")
    # The server has (or, having stopped reading, will idle out) the close; its reply and
    # the echo sit behind a zero window: only the close timeout can free the connection.
    return [], IDLE + CLOSE + SLACK


def sc_zero_window(demo, base, n=8, per_client=64 << 20):
    """n clients send 64 KiB messages to /echo and never read, until the server stops taking
    them (its send queue past max_backpressure pauses reading; the kernel buffers on both
    sides fill) or per_client bytes are sent."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(5)
        s.connect(("127.0.0.1", demo.port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(upgrade_request(demo.port, "/echo", key))
        head = b""
        while b"\r\n\r\n" not in head:
            b = s.recv(1)
            if not b:
                return ["connection closed during the handshake"], SLACK
            head += b
        s.setblocking(False)
        socks.append(s)
    msg = frame(0x2, os.urandom(64 << 10))
    left = {s: per_client for s in socks}
    sent = {s: 0 for s in socks}
    pos = {s: 0 for s in socks}
    deadline = time.monotonic() + 6
    last_progress = time.monotonic()
    while left and time.monotonic() < deadline and time.monotonic() - last_progress < 1.5:
        _, w, _ = select.select([], list(left), [], 0.2)
        for s in w:
            try:
                k = s.send(msg[pos[s]:])
            except BlockingIOError:
                continue
            except OSError:
                del left[s]
                continue
            last_progress = time.monotonic()
            sent[s] += k
            pos[s] = (pos[s] + k) % len(msg)
            left[s] -= k
            if left[s] <= 0 and pos[s] == 0:
                del left[s]
    HELD.extend(socks)
    NOTES.append(f"{n} readers sent {min(sent.values()) >> 20}-{max(sent.values()) >> 20} MiB "
                 f"each, {len(left)} of them stopped by a full window")
    return [], IDLE + CLOSE + SLACK


def sc_slowloris(demo, base, n=32):
    """n clients dribble a handshake one byte every 300 ms, never finishing."""
    before = demo.total("sockeye_handshake_timeouts_total")
    pad = "X-Pad: " + "a" * 400 + "\r\n"
    req = (f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{demo.port}\r\n{pad}Upgrade: websocket\r\n"
           "Connection: Upgrade\r\n").encode()
    socks = [socket.create_connection(("127.0.0.1", demo.port), timeout=5) for _ in range(n)]
    stop = threading.Event()
    dropped = set()

    def dribble():
        i = 0
        while not stop.is_set() and i < len(req):
            for s in socks:
                if s in dropped:
                    continue
                try:
                    s.send(req[i:i + 1])
                except OSError:
                    dropped.add(s)
            i += 1
            stop.wait(0.3)

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    HELD.extend(socks)
    HELD.append((stop, t))
    problems = []
    # The counter is checked after the timeout; the baseline check follows.
    deadline = time.monotonic() + HANDSHAKE + SLACK
    after = before
    while time.monotonic() < deadline:
        after = demo.total("sockeye_handshake_timeouts_total")
        if after - before >= n:
            break
        time.sleep(0.2)
    if after - before < n:
        problems.append(f"sockeye_handshake_timeouts_total +{after - before}, want +{n}")
    return problems, SLACK


def sc_resets(demo, base, n=32):
    """n clients send half of a 256 KiB frame, then reset (SO_LINGER 0)."""
    socks = []
    for _ in range(n):
        c = Ws(demo.port, "/echo")
        whole = frame(0x2, os.urandom(256 << 10))
        c.sock.sendall(whole[:len(whole) // 2])
        socks.append(c.sock)
    time.sleep(0.3)  # let the server read the halves into assembly buffers
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    return [], SLACK


def sc_emfile(demo, base, n=400):
    """More connections than the demo's descriptor limit, all asking to upgrade, then released."""
    problems = []
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", demo.port))
            s.sendall(upgrade_request(demo.port, "/echo", base64.b64encode(os.urandom(16)).decode()))
        except OSError as e:
            s.close()
            problems.append(f"connect {len(socks)}: {e}")
            break
        s.setblocking(False)
        socks.append(s)
    t0, c0 = time.monotonic(), demo.cpu()
    peak = 0
    while time.monotonic() - t0 < 2:
        peak = max(peak, demo.fds())
        time.sleep(0.1)
    cpu = (demo.cpu() - c0) / (time.monotonic() - t0)
    NOTES.append(f"fd peak {peak}, {cpu:.2f} CPU s/s at the limit")
    upgraded = 0
    for s in socks:
        try:
            if s.recv(12).startswith(b"HTTP/1.1 101"):
                upgraded += 1
        except OSError:
            pass
    if peak < NOFILE - 16:
        problems.append(f"the demo never neared its fd limit (peak {peak} of {NOFILE}): "
                        "the scenario did not reach EMFILE")
    if upgraded >= len(socks):
        problems.append(f"all {upgraded} upgraded under a limit of {NOFILE} fds?")
    if cpu > 0.5:
        problems.append(f"demo burnt {cpu:.2f} CPU s/s while out of descriptors (spinning?)")
    for s in socks:
        s.close()
    return problems, HANDSHAKE + SLACK


def sc_panics(demo, base, k=6):
    """--chaos: each /panic client gets 1011; /echo clients keep echoing; the counter grows."""
    problems = []
    before = demo.total("sockeye_handler_panics_total")
    echoers = [Ws(demo.port, "/echo", timeout=3) for _ in range(4)]
    for i in range(k):
        try:
            c = Ws(demo.port, "/panic", timeout=3)
            c.sock.sendall(frame(0x1, b"boom"))
            op, payload = c.recv_frame()
            while op != 0x8:
                op, payload = c.recv_frame()
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            if code != 1011:
                problems.append(f"/panic client {i}: close code {code}, want 1011")
            c.sock.sendall(close_frame(1011))
            c.sock.close()
        except (OSError, EOFError, Failure) as e:
            problems.append(f"/panic client {i}: no close 1011 ({type(e).__name__}: {e})")
        for j, e in enumerate(echoers):
            if e is None:
                continue
            try:
                e.echo(0x1, f"after panic {i}".encode())
            except (OSError, EOFError, Failure) as err:
                problems.append(f"/echo client {j} stopped echoing after panic {i}: "
                                f"{type(err).__name__}: {err}")
                echoers[j] = None
    try:
        after = demo.total("sockeye_handler_panics_total")
        if after - before < k:
            problems.append(f"sockeye_handler_panics_total +{after - before}, want +{k}")
    except (OSError, Failure) as e:
        problems.append(f"/metrics after the panics: {e}")
    for e in echoers:
        if e is not None:
            try:
                e.close(1000)
            except (OSError, EOFError, Failure) as err:
                problems.append(f"/echo close: {err}")
    return problems, CLOSE + SLACK


def client_hello():
    """The first flight of a real TLS client (Python's ssl, from a memory BIO), as bytes."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def s_client(port, *flags):
    """openssl s_client against the demo with `flags`: (exit status, output)."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                        "-CAfile", CERTS["@CA@"], *flags], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
    return r.returncode, r.stdout.decode(errors="replace")


def sc_tls(demo, base):
    """--tls: plaintext HTTP, a truncated ClientHello left hanging, TLS 1.1 only and an illegal
    SNI name from openssl s_client; a wss:// client opened first echoes throughout."""
    problems = []
    errors_before = demo.total("sockeye_tls_errors_total")
    keeper = Ws(demo.port, "/echo")
    keeper.echo(0x1, b"before")

    # Plaintext HTTP (a client that meant ws://) gets a 400 that says TLS, then the end.
    s = socket.create_connection(("127.0.0.1", demo.port), timeout=5)
    s.sendall(f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{demo.port}\r\n\r\n".encode())
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except OSError as e:
        problems.append(f"plaintext HTTP: {type(e).__name__} after {got[:40]!r}")
    s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 400 ") or b"TLS" not in body:
        problems.append(f"plaintext HTTP answered {got[:120]!r}, want a 400 whose body names TLS")

    # Half a ClientHello, then silence: dropped at the handshake timeout, not before.
    hello = client_hello()
    stalled = socket.create_connection(("127.0.0.1", demo.port), timeout=HANDSHAKE + SLACK)
    stalled.sendall(hello[:len(hello) // 2])
    t0 = time.monotonic()
    try:
        end = stalled.recv(4096)
    except OSError as e:  # a reset is a drop too
        end = type(e).__name__
    waited = time.monotonic() - t0
    stalled.close()
    NOTES.append(f"truncated ClientHello dropped after {waited:.1f} s")
    if end not in (b"", "ConnectionResetError") or waited < HANDSHAKE * 0.8:
        problems.append(f"truncated ClientHello: read {end!r} after {waited:.1f} s, want the "
                        f"end of the stream at the {HANDSHAKE:.0f} s handshake timeout")

    # openssl s_client: TLS 1.1 only (refused: the engine speaks 1.2 and 1.3), and a server
    # name that is no DNS name (refused by rustls with an alert). Both fail, and say so.
    for what, flags, want in (("TLS 1.1 only", ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], "alert"),
                              ("an illegal SNI name", ["-servername", "bad_name!"], "alert")):
        rc, out = s_client(demo.port, *flags)
        if rc == 0 or want not in out:
            tail = " | ".join(out.strip().splitlines()[-3:])
            problems.append(f"s_client with {what}: exit {rc}, want a failure with an {want} "
                            f"({tail})")
    # The same s_client, well-formed, succeeds (so the failures above are the server's doing).
    rc, out = s_client(demo.port, "-servername", "localhost", "-verify_return_error")
    if rc != 0 or "Verify return code: 0 (ok)" not in out:
        problems.append(f"s_client, well-formed: exit {rc}: {out.strip().splitlines()[-1:]}")

    try:
        keeper.echo(0x1, b"after the bad clients")
        keeper.echo(0x2, os.urandom(100000))
        keeper.close(1000)
    except (OSError, EOFError, Failure) as e:
        problems.append(f"the wss:// client stopped echoing: {type(e).__name__}: {e}")
    errors = demo.total("sockeye_tls_errors_total") - errors_before
    if errors < 3:  # plaintext, TLS 1.1, bad SNI (the stalled one is a timeout)
        problems.append(f"sockeye_tls_errors_total +{errors}, want at least +3")
    return problems, SLACK


SCENARIOS = [
    ("metrics", "/metrics format and values", sc_metrics, [], None),
    ("big-close", "big message + close, never read", sc_big_close,
     ["--max-backpressure", str(16 << 20), "--max-message-size", str(16 << 20)], None),
    ("zero-window", "zero-window readers", sc_zero_window, ["--max-backpressure", str(1 << 20)], None),
    ("slowloris", "slowloris handshakes", sc_slowloris, [], None),
    ("resets", "resets mid-message", sc_resets, [], None),
    ("emfile", f"EMFILE (ulimit -n {NOFILE})", sc_emfile, [], NOFILE),
    ("panics", "handler panics (--chaos)", sc_panics, ["--chaos"], None),
    ("tls", "bad input over TLS (--tls)", sc_tls, ["--tls", "@CERT@", "@KEY@"], None),
]


def release_held():
    for h in HELD:  # threads first: they write to the sockets
        if isinstance(h, tuple):
            h[0].set()
            h[1].join(5)
    for h in HELD:
        if not isinstance(h, tuple):
            try:
                h.close()
            except OSError:
                pass
    HELD.clear()


def run_one(binary, backend, name, title, fn, flags, nofile):
    global TLS_CLIENT
    t0 = time.monotonic()
    flags = [CERTS.get(f, f) for f in flags]
    demo = Demo(binary, backend, COMMON + flags, nofile)
    problems = []
    if "--tls" in flags:
        TLS_CLIENT = ssl.create_default_context(cafile=CERTS["@CA@"])
    try:
        demo.start()
        want = {"epoll": "Epoll", "io_uring": "IoUring"}.get(backend)
        got = demo.backend_logged()
        if want and got != want:
            raise Failure(f"demo runs {got}, not {want}")
        base = baseline(demo)
        try:
            problems, within = fn(demo, base)
        except (OSError, EOFError, Failure) as e:
            problems, within = [f"scenario: {type(e).__name__}: {e}"], IDLE + CLOSE + SLACK
        problems += back_to_baseline(demo, base, within)
        release_held()
        if demo.alive():
            try:
                fresh_echo(demo.port)
            except (OSError, EOFError, Failure) as e:
                problems.append(f"fresh /echo client: {type(e).__name__}: {e}")
    except (OSError, EOFError, Failure) as e:
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        release_held()
        alive = demo.alive()
        rc = demo.stop()
        if not alive:
            problems.append(f"demo died (exit {rc}): {demo.log_tail(3)}")
        elif rc != 0:
            problems.append(f"demo exited {rc} on SIGINT")
        TLS_CLIENT = None
    dt = time.monotonic() - t0
    notes = f" [{'; '.join(NOTES)}]" if NOTES else ""
    NOTES.clear()
    if problems:
        print(f"faults: [{backend}] {title}: FAILED ({dt:.1f} s): " + "; ".join(problems) + notes,
              flush=True)
        print(f"    demo log: {demo.log.name}", flush=True)
    else:
        print(f"faults: [{backend}] {title}: ok ({dt:.1f} s){notes}", flush=True)
        demo.remove_log()
    return not problems


def io_uring_available(binary):
    """Whether the demo starts on io_uring, or else `--backend auto` picks epoll (then the
    io_uring runs are skipped, as in tests/e2e/run.sh; any other start failure is reported by
    the scenarios themselves)."""
    for backend in ("io_uring", "auto"):
        demo = Demo(binary, backend, COMMON)
        try:
            demo.start()
            got = demo.backend_logged()
        except Failure:
            got = None
        finally:
            demo.stop()
            demo.remove_log()
        if backend == "io_uring" and got == "IoUring":
            return True
        if backend == "auto":
            return got != "Epoll"
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", required=True, help="the demo binary")
    ap.add_argument("--backends", default="epoll io_uring")
    ap.add_argument("--only", nargs="*", default=None,
                    help="scenarios to run: " + " ".join(s[0] for s in SCENARIOS))
    args = ap.parse_args()
    # A TERM (the stage's `timeout`) unwinds like an error, so every demo is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    chosen = [s for s in SCENARIOS if args.only is None or s[0] in args.only]
    if args.only and len(chosen) != len(args.only):
        sys.exit(f"unknown scenario in {args.only}")
    if any("--tls" in s[3] for s in chosen):
        if not shutil.which("openssl"):
            sys.exit("faults: the TLS scenario needs openssl")
        certs = tempfile.mkdtemp(prefix="sockeye-faults-tls-")
        subprocess.run(["bash", os.path.join(HERE, "..", "tls", "make-certs.sh"), certs],
                       check=True)
        CERTS.update({"@CERT@": os.path.join(certs, "cert.pem"),
                      "@KEY@": os.path.join(certs, "key.pem"),
                      "@CA@": os.path.join(certs, "ca.pem")})
    try:
        run_all(args, chosen)
    finally:
        if CERTS:
            shutil.rmtree(os.path.dirname(CERTS["@CA@"]), ignore_errors=True)


def run_all(args, chosen):
    t0 = time.monotonic()
    ok = failed = 0
    for backend in args.backends.split():
        if backend == "io_uring" and not io_uring_available(args.demo):
            print("faults: [io_uring] SKIP: this kernel offers no io_uring "
                  "(--backend auto picks epoll)", flush=True)
            continue
        for name, title, fn, flags, nofile in chosen:
            if run_one(args.demo, backend, name, title, fn, flags, nofile):
                ok += 1
            else:
                failed += 1
    print(f"faults: {ok} ok, {failed} failed ({time.monotonic() - t0:.0f} s)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
