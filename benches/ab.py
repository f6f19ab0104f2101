#!/usr/bin/env python3
"""Interleaved A/B runs of the demo under different flags (backends, buffer ring, thresholds).

    benches/ab.py OUT.jsonl ROUNDS < configs

One config per line, `NAME | DEMO-FLAGS | LOADGEN-FLAGS`; every round runs every line once,
in order (A B C A B C ...), a fresh demo per run pinned to CPU 0 (`--workers 1`), loadgen on
CPU 1, port 9461. Each run's loadgen JSON goes to OUT.jsonl with name/server/round/noise added;
a line per run is printed. Binaries from $T, else $CARGO_TARGET_DIR/release, else
target/release (build the demo and loadgen with --release first). Example config lines, as
used for benches/README.md:

    ep-500x16k | --backend epoll | echo --connections 500 --size 16384 --duration 3 --warmup 1
    ur-500x16k | --backend io_uring --uring-buffer-size 32768 | echo --connections 500 --size 16384 --duration 3 --warmup 1
    old-10x64k | --backend io_uring --bin=/tmp/old/demo | echo --connections 10 --size 65536 --duration 3 --warmup 1
    ur-4x8 | --backend io_uring | fanout --connections 10000 --publishers 4 --inflight 8 --duration 3 --warmup 1
    urzc4k-10x64k | --backend io_uring --zc-threshold 4096 | echo --connections 10 --size 65536 --duration 3 --warmup 1
    ur-nodirect | --backend io_uring --direct-write-min 18446744073709551615 | echo --connections 10 --size 65536 --duration 3 --warmup 1
"""
import json, subprocess, sys, time, socket, os
T = os.environ.get("T", os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release"))
PORT = 9461
def wait_port(p):
    for _ in range(100):
        try:
            socket.create_connection(('127.0.0.1', p), 0.2).close(); return
        except OSError: time.sleep(0.05)
def wait_free(p):
    # An io_uring demo's listener can outlive its process for a moment (the ring is torn down
    # after exit): starting the next demo before the port is free would fail to bind.
    for _ in range(200):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(('127.0.0.1', p)); s.listen(1); return
        except OSError: time.sleep(0.05)
        finally: s.close()
def run(out, name, sargs, largs, rnd):
    wait_free(PORT)
    # `--bin=PATH` among the demo flags runs that build of the demo instead (old against new).
    demo = next((a[6:] for a in sargs if a.startswith('--bin=')), f'{T}/examples/demo')
    # `--env=NAME=VALUE` sets a variable in that demo's environment (an A/B switch in a build).
    env = dict(os.environ, **dict(a[6:].split('=', 1) for a in sargs if a.startswith('--env=')))
    sargs = [a for a in sargs if not a.startswith(('--bin=', '--env='))]
    srv = subprocess.Popen(['taskset','-c','0',demo,'--addr',f'127.0.0.1:{PORT}','--workers','1',*sargs], stderr=subprocess.DEVNULL, env=env)
    wait_port(PORT); time.sleep(0.3)
    try:
        # fanout loads go to the demo's /chat room, everything else to /echo.
        # A demo given `--tls CERT KEY` is spoken to over wss:// (pass the loadgen `--ca`).
        path = 'chat' if largs and largs[0] == 'fanout' else 'echo'
        scheme = 'wss' if '--tls' in sargs else 'ws'
        subprocess.run(['taskset','-c','1',f'{T}/loadgen',*largs,'--url',f'{scheme}://127.0.0.1:{PORT}/{path}','--server-pid',str(srv.pid),
                        '--server-cpu','0','--loadgen-cpu','1','--quiet','--json','/tmp/ab-one.json'], timeout=120)
        d = json.load(open('/tmp/ab-one.json'))
    except Exception as e:
        d = {'error': str(e)}
    finally:
        srv.terminate(); srv.wait()
    d.update(name=name, server=' '.join(sargs), round=rnd)
    if 'machine_busy_core_s' in d:
        d['noise'] = d.get('other_processes_core_s')
    open(out, 'a').write(json.dumps(d) + '\n')
    rate = d.get('messages_per_s', d.get('delivered_per_s', 0))
    print(name, d.get('server'), rnd, round(rate or 0), 'srv_us', round(d.get('server_cpu_us_per_msg', 0) or 0, 3), 'noise', d.get('noise'), flush=True)
cfgs = [l.strip().split('|') for l in sys.stdin if l.strip() and not l.startswith('#')]
for r in range(int(sys.argv[2])):
    for name, s, l in cfgs:
        run(sys.argv[1], name.strip(), s.split(), l.split(), r)
