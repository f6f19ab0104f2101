"""A Sockeye echo server in Python, through ctypes and libsockeye.so: serves
ws://127.0.0.1:PORT/echo (every message comes back as it came; other paths get 404) and stops
gracefully on SIGINT or SIGTERM.

    python3 echo.py [PORT [WORKERS]]      (or SOCKEYE_PORT / SOCKEYE_WORKERS)

The library is found through SOCKEYE_LIB (a path to libsockeye.so), else the system's
library path (an installed libsockeye), else this repository's target/release. The callbacks
are Python functions called from the worker threads: ctypes takes the GIL for each call, so
Python runs one callback at a time; the C library copies every buffer it is handed.
"""

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from ctypes import POINTER, c_bool, c_char_p, c_int, c_size_t, c_uint16, c_uint32, c_uint64, c_uint8, c_void_p

# ---------------------------------------------------------------- the C API, as in sockeye.h --


def load_library():
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        os.environ.get("SOCKEYE_LIB"),
        ctypes.util.find_library("sockeye"),
        os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(here, "..", "..", "target")), "release", "libsockeye.so"),
    ]
    for path in candidates:
        if path:
            try:
                return ctypes.CDLL(path)
            except OSError:
                continue
    raise SystemExit("libsockeye.so not found: build it (cargo build --release -p sockeye-ffi) or set SOCKEYE_LIB")


lib = load_library()

SOCKEYE_OK = 0
SOCKEYE_UPGRADE_ACCEPT = 0


class Config(ctypes.Structure):
    """struct sockeye_config: field for field, in order."""

    _fields_ = [
        ("address", c_char_p),
        ("port", c_uint16),
        ("workers", c_uint32),
        ("backend", c_uint32),
        ("max_message_size", c_uint64),
        ("max_frame_size", c_uint64),
        ("max_fragments", c_uint32),
        ("max_handshake_bytes", c_size_t),
        ("handshake_timeout_ms", c_uint32),
        ("close_timeout_ms", c_uint32),
        ("idle_timeout_ms", c_uint32),
        ("auto_ping_ms", c_uint32),
        ("max_backpressure", c_size_t),
        ("close_on_backpressure_limit", c_bool),
        ("max_connections", c_size_t),
        ("shutdown_timeout_ms", c_uint32),
        ("worker_memory_budget", c_size_t),
        ("share_port", c_bool),
        ("buffer_cache", c_size_t),
        ("max_topic_len", c_size_t),
        ("deflate", c_bool),
        ("deflate_server_no_context_takeover", c_bool),
        ("deflate_client_no_context_takeover", c_bool),
        ("deflate_server_max_window_bits", c_uint8),
        ("deflate_client_max_window_bits", c_uint8),
        ("deflate_level", c_uint8),
        ("deflate_dedicated", c_bool),
        ("deflate_min_size", c_size_t),
        ("tls_cert_file", c_char_p),
        ("tls_key_file", c_char_p),
        ("tls_address", c_char_p),
        ("cluster_url", c_char_p),
    ]


UPGRADE_CB = ctypes.CFUNCTYPE(c_uint16, c_void_p, c_void_p, c_void_p)
CONN_CB = ctypes.CFUNCTYPE(None, c_void_p, c_void_p)
MESSAGE_CB = ctypes.CFUNCTYPE(None, c_void_p, c_void_p, c_uint32, POINTER(ctypes.c_uint8), c_size_t)
CLOSE_CB = ctypes.CFUNCTYPE(None, c_void_p, c_void_p, c_uint16, POINTER(ctypes.c_char), c_size_t)
CONTROL_CB = ctypes.CFUNCTYPE(None, c_void_p, c_void_p, POINTER(ctypes.c_uint8), c_size_t)
HTTP_CB = ctypes.CFUNCTYPE(c_uint16, c_void_p, c_void_p, c_void_p)


class Callbacks(ctypes.Structure):
    """struct sockeye_callbacks: NULL (None) entries are ignored by the library."""

    _fields_ = [
        ("on_upgrade", UPGRADE_CB),
        ("on_open", CONN_CB),
        ("on_message", MESSAGE_CB),
        ("on_drain", CONN_CB),
        ("on_close", CLOSE_CB),
        ("on_ping", CONTROL_CB),
        ("on_pong", CONTROL_CB),
        ("on_http", HTTP_CB),
    ]


def fn(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype, f.argtypes = restype, list(argtypes)
    return f


strerror = fn("sockeye_strerror", c_char_p, c_int)
version = fn("sockeye_version", c_char_p)
config_default = fn("sockeye_config_default", c_int, POINTER(Config))
server_new = fn("sockeye_server_new", c_int, POINTER(Config), POINTER(Callbacks), c_void_p, POINTER(c_void_p))
server_run = fn("sockeye_server_run", c_int, c_void_p)
server_stop = fn("sockeye_server_stop", c_int, c_void_p)
server_free = fn("sockeye_server_free", None, c_void_p)
server_local_port = fn("sockeye_server_local_port", c_uint16, c_void_p)
request_path = fn("sockeye_request_path", c_char_p, c_void_p, POINTER(c_size_t))
conn_send = fn("sockeye_conn_send", c_int, c_void_p, c_uint32, POINTER(ctypes.c_uint8), c_size_t)


def check(rc, what):
    if rc != SOCKEYE_OK:
        raise RuntimeError(f"{what}: {strerror(rc).decode()}")


# ------------------------------------------------------------------------------- the server --


def on_upgrade(_user, request, _upgrade):
    # The path is lent for this call only; c_char_p copies it into a Python bytes object.
    return SOCKEYE_UPGRADE_ACCEPT if request_path(request, None) == b"/echo" else 404


def on_message(_user, conn, opcode, data, length):
    # `data` is lent for this call only; the send copies it before returning.
    conn_send(conn, opcode, data, length)


def main():
    args = sys.argv[1:]
    port = int(args[0] if args else os.environ.get("SOCKEYE_PORT", "9004"))
    workers = int(args[1] if len(args) > 1 else os.environ.get("SOCKEYE_WORKERS", "0"))

    cfg = Config()
    check(config_default(ctypes.byref(cfg)), "sockeye_config_default")
    cfg.address = b"127.0.0.1"
    cfg.port = port
    cfg.workers = workers

    # Keep the CFUNCTYPE objects alive for as long as the server runs: the library keeps only
    # the raw function pointers.
    callbacks = Callbacks(on_upgrade=UPGRADE_CB(on_upgrade), on_message=MESSAGE_CB(on_message))

    server = c_void_p()
    check(server_new(ctypes.byref(cfg), ctypes.byref(callbacks), None, ctypes.byref(server)), "sockeye_server_new")
    print(f"listening on ws://127.0.0.1:{server_local_port(server)}/echo (sockeye {version().decode()})", flush=True)

    # sockeye_server_run blocks (without the GIL), so it gets its own thread; the main thread
    # keeps Python's signal handling and stops the server on SIGINT/SIGTERM.
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("rc", server_run(server)), name="sockeye-run")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runner.start()
    while runner.is_alive() and not stop.wait(0.2):
        pass
    server_stop(server)
    runner.join()
    server_free(server)
    check(result.get("rc", SOCKEYE_OK), "sockeye_server_run")
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
