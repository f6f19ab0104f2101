// The Node ws peer for benches/compare.sh (see benches/peers/README.md): a `ws` WebSocketServer
// with permessage-deflate on, the way ws's README enables it.
//
//   /echo   every text/binary message is sent back as it came (compressed when the client
//           negotiated permessage-deflate and the message is over ws's threshold)
//   else    404
//
// `perMessageDeflate: true` keeps ws's defaults: context takeover both ways (a zlib stream per
// connection and direction, made on first use), Node's zlib defaults for the streams
// (level 6 = Z_DEFAULT_COMPRESSION, memLevel 8), messages under 1024 bytes sent uncompressed,
// at most 10 zlib jobs at once. --no-deflate turns compression off.
//
//   node benches/peers/node/server.js [--addr HOST:PORT] [--no-deflate]   (default 127.0.0.1:9401)

"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");

let addr = "127.0.0.1:9401";
let deflate = true;
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--addr" && i + 1 < argv.length) {
    addr = argv[++i];
  } else if (argv[i] === "--no-deflate") {
    deflate = false;
  } else {
    const help = argv[i] === "-h" || argv[i] === "--help";
    (help ? console.log : console.error)(
      "usage: node server.js [--addr HOST:PORT] [--no-deflate]   (default 127.0.0.1:9401)",
    );
    process.exit(help ? 0 : 2);
  }
}
const colon = addr.lastIndexOf(":");
const host = addr.slice(0, colon);
const port = Number(addr.slice(colon + 1));
if (colon < 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`server.js: --addr ${addr}: expected HOST:PORT`);
  process.exit(2);
}

const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end("not found\n");
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: deflate, maxPayload: 16 << 20 });
server.on("upgrade", (req, socket, head) => {
  if (new URL(req.url, "http://x").pathname !== "/echo") {
    socket.end("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
});
server.listen(port, host, () => {
  const a = server.address();
  console.error(
    `listening on ws://${a.address}:${a.port} (Node ${process.version}, ws, perMessageDeflate ${deflate})`,
  );
});
