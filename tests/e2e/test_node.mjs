// End-to-end checks of the sockeye demo server with the Node `ws` client.
//
// Usage: node test_node.mjs ws://127.0.0.1:PORT
//        node test_node.mjs wss://127.0.0.1:PORT CA.pem   (TLS, trusting only that CA)
//
//   echo       /echo returns text (multi-byte UTF-8) and binary messages of several sizes
//              unchanged, with the right type (text stays text, binary stays binary).
//   chat       2 clients on /chat: each one's lines reach both, the sender included.
//   ping/pong  a ping with a payload is answered by a pong with the same payload.
//   close      client closes 1000 -> the server's close frame carries 1000.
//
// Prints one `ok`/`FAIL` line per check; exits 1 if any check failed.

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import WebSocket from "ws";

const base = process.argv[2];
const caFile = process.argv[3];
if (!base || (base.startsWith("wss://") && !caFile)) {
  console.error("usage: node test_node.mjs ws://HOST:PORT | wss://HOST:PORT CA.pem");
  process.exit(2);
}
// wss://: the demo's certificate must chain to this CA alone (and name the host); Node checks
// both, as for any https.
const tls = base.startsWith("wss://") ? { ca: readFileSync(caFile) } : {};
const TIMEOUT_MS = 10_000;
let failures = 0;

function report(ok, what, detail = "") {
  if (ok) console.log(`  ok   ${what}`);
  else {
    failures++;
    console.log(`  FAIL ${what}${detail ? ": " + detail : ""}`);
  }
}

function withTimeout(promise, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), TIMEOUT_MS);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

// A client whose incoming messages queue up, so tests can `await next()` them in order.
function open(path) {
  const ws = new WebSocket(base + path, { perMessageDeflate: false, maxPayload: 16 << 20, ...tls });
  const queue = [];
  const waiters = [];
  ws.on("message", (data, isBinary) => {
    const m = { data, isBinary };
    if (waiters.length) waiters.shift()(m);
    else queue.push(m);
  });
  ws.next = () =>
    withTimeout(
      new Promise((resolve) => (queue.length ? resolve(queue.shift()) : waiters.push(resolve))),
      `message on ${path}`,
    );
  ws.queued = () => queue.length;
  return withTimeout(
    new Promise((resolve, reject) => {
      ws.once("open", () => resolve(ws));
      ws.once("error", reject);
    }),
    `open ${path}`,
  );
}

function textOf(n) {
  const unit = "sockeye é ✓ 🐟 ";
  return Array.from(unit.repeat(Math.ceil(n / [...unit].length) + 1)).slice(0, n).join("");
}

function closeAndWait(ws, code, reason) {
  return withTimeout(
    new Promise((resolve) => {
      ws.once("close", (c, r) => resolve({ code: c, reason: r.toString() }));
      ws.close(code, reason);
    }),
    "close",
  );
}

async function testEcho() {
  console.log(`[node] echo via ${base}/echo`);
  const ws = await open("/echo");
  if (base.startsWith("wss://")) {
    const sock = ws._socket; // ws' own tls.TLSSocket under the WebSocket
    report(sock.encrypted && sock.authorized, `TLS ${sock.getProtocol()} to a certificate the CA signed`,
      `encrypted=${sock.encrypted} authorized=${sock.authorized} ${sock.authorizationError ?? ""}`);
  }
  for (const n of [0, 1, 125, 126, 65535, 65536, 1 << 20]) {
    const msg = textOf(n);
    ws.send(msg);
    const m = await ws.next();
    const got = m.data.toString("utf8");
    report(!m.isBinary && got === msg, `echo text ${n} chars (${Buffer.byteLength(msg)} bytes)`,
      `binary=${m.isBinary} len=${got.length}`);
  }
  for (const n of [0, 1, 125, 126, 65535, 65536, 1 << 20]) {
    const msg = randomBytes(n);
    ws.send(msg);
    const m = await ws.next();
    report(m.isBinary && Buffer.compare(m.data, msg) === 0, `echo binary ${n} bytes`,
      `binary=${m.isBinary} len=${m.data.length}`);
  }
  return ws;
}

async function testPing(ws) {
  console.log(`[node] ping/pong`);
  const payload = Buffer.from("ping-from-node");
  const pong = withTimeout(new Promise((resolve) => ws.once("pong", resolve)), "pong");
  const t0 = process.hrtime.bigint();
  ws.ping(payload);
  const got = await pong;
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  report(Buffer.compare(got, payload) === 0, `ping answered by pong with same payload (${ms.toFixed(1)} ms)`,
    `pong payload ${JSON.stringify(got.toString())}`);
  // Empty ping too.
  const pong2 = withTimeout(new Promise((resolve) => ws.once("pong", resolve)), "pong");
  ws.ping();
  report((await pong2).length === 0, "empty ping answered by empty pong");
}

async function testChat() {
  console.log(`[node] chat between 2 clients via ${base}/chat`);
  const a = await open("/chat");
  const b = await open("/chat");
  const lines = ["hello from A ✓", "hello from B 🐟", "A again"];
  a.send(lines[0]);
  // Wait until A's line is seen by both before B speaks, so the order is fixed.
  const a1 = await a.next();
  const b1 = await b.next();
  b.send(lines[1]);
  const a2 = await a.next();
  const b2 = await b.next();
  a.send(lines[2]);
  const a3 = await a.next();
  const b3 = await b.next();
  const gotA = [a1, a2, a3].map((m) => m.data.toString());
  const gotB = [b1, b2, b3].map((m) => m.data.toString());
  report(JSON.stringify(gotA) === JSON.stringify(lines), "client A gets both clients' lines (own included)",
    JSON.stringify(gotA));
  report(JSON.stringify(gotB) === JSON.stringify(lines), "client B gets both clients' lines (own included)",
    JSON.stringify(gotB));
  report([a1, a2, a3, b1, b2, b3].every((m) => !m.isBinary), "chat lines arrive as text frames");
  await new Promise((r) => setTimeout(r, 200));
  report(a.queued() === 0 && b.queued() === 0, "no duplicate chat lines");
  await closeAndWait(a, 1000, "");
  await closeAndWait(b, 1000, "");
}

async function main() {
  try {
    const ws = await testEcho();
    await testPing(ws);
    console.log(`[node] close`);
    const c = await closeAndWait(ws, 1000, "done");
    report(c.code === 1000, "client closes 1000 -> server answers 1000", `code ${c.code}`);
    await testChat();
  } catch (e) {
    report(false, "node test raised", String(e && e.stack ? e.stack : e));
  }
  process.exit(failures ? 1 : 0);
}

main();
