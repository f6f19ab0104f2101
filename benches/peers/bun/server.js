// The Bun peer for benches/compare.sh (see benches/peers/README.md): Bun.serve with a websocket
// handler, the way Bun's docs write a pub/sub server.
//
//   /echo             every text/binary message is sent back as it came
//   /chat?room=NAME   subscribes to topic NAME (default "chat") on open; every text message is
//                     published with server.publish, so the sender receives it too
//   anything else     404
//
// No compression (perMessageDeflate: false) unless --deflate: perMessageDeflate: true (Bun's
// shared compressor and decompressor; Bun 1.4.5 answers client_no_context_takeover and
// server_no_context_takeover) and every echo sent with ws.send(message, true), since Bun
// compresses only what is sent with compress = true. Bun's other WebSocket defaults
// are kept (16 MiB messages and backpressure limit, 120 s idle timeout, automatic pings).
//
// With --tls CERT.pem KEY.pem it serves wss:// (Bun.serve's `tls: { cert, key }`, BoringSSL).
//
//   bun benches/peers/bun/server.js [--addr HOST:PORT] [--deflate] [--tls CERT KEY]
//   (default 127.0.0.1:9400)

let addr = "127.0.0.1:9400";
let deflate = false;
let tls = undefined;
const argv = Bun.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--addr" && i + 1 < argv.length) {
    addr = argv[++i];
  } else if (argv[i] === "--deflate") {
    deflate = true;
  } else if (argv[i] === "--tls" && i + 2 < argv.length) {
    tls = { cert: Bun.file(argv[++i]), key: Bun.file(argv[++i]) };
  } else {
    const help = argv[i] === "-h" || argv[i] === "--help";
    (help ? console.log : console.error)(
      "usage: bun server.js [--addr HOST:PORT] [--deflate] [--tls CERT KEY]   (default 127.0.0.1:9400)",
    );
    process.exit(help ? 0 : 2);
  }
}
const colon = addr.lastIndexOf(":");
const hostname = addr.slice(0, colon);
const port = Number(addr.slice(colon + 1));
if (colon < 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`server.js: --addr ${addr}: expected HOST:PORT`);
  process.exit(2);
}

const server = Bun.serve({
  hostname,
  port,
  tls,
  fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === "/chat") {
      const room = url.searchParams.get("room") || "chat";
      if (server.upgrade(req, { data: { room } })) return;
      return new Response("WebSocket upgrade expected\n", { status: 426 });
    }
    if (url.pathname === "/echo") {
      if (server.upgrade(req, { data: { room: null } })) return;
      return new Response("WebSocket upgrade expected\n", { status: 426 });
    }
    return new Response("not found\n", { status: 404 });
  },
  websocket: {
    perMessageDeflate: deflate,
    open(ws) {
      if (ws.data.room !== null) ws.subscribe(ws.data.room);
    },
    message(ws, message) {
      if (ws.data.room === null) {
        // Bun compresses a message only when asked (`compress` defaults to false).
        ws.send(message, deflate);
      } else if (typeof message === "string") {
        server.publish(ws.data.room, message);
      }
    },
  },
});

console.error(
  `listening on ws://${server.hostname}:${server.port} (Bun ${Bun.version}, perMessageDeflate ${deflate})`,
);
