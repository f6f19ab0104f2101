// peer-uws: the uWebSockets peer for benches/compare.sh (see benches/peers/README.md).
//
//   /echo             every text/binary message is sent back as it came (same opcode)
//   /chat?room=NAME   joins topic NAME (default "chat") on open; every text message is
//                     published to that topic with app.publish, so the sender gets it too
//   anything else     404
//
// One thread, one uWS::App (uSockets' epoll loop), no compression, no SSL. Limits as Bun sets
// them for its uWS-based server (16 MiB backpressure, 120 s idle timeout, automatic pings),
// except the message size: 64 MiB, as the Rust peers allow, so that 64 KiB echoes fit.
//
//   peer-uws [--addr HOST:PORT]     (default 127.0.0.1:9400)
//
// Compiled against a uWebSockets and a uSockets source tree that you provide (neither is part
// of this repository) into benches/peers/uws/build/peer-uws; see benches/peers/README.md.

#include "App.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace {

struct Conn {
    // The topic a /chat connection joined; empty on /echo.
    std::string room;
};

[[noreturn]] void usage(const char *bin, int code) {
    std::fprintf(code ? stderr : stdout,
                 "%s: WebSocket echo (/echo) and pub/sub (/chat?room=NAME) server on uWebSockets\n"
                 "usage: %s [--addr HOST:PORT]   (default 127.0.0.1:9400)\n",
                 bin, bin);
    std::exit(code);
}

template <typename Behavior>
Behavior limits(Behavior b) {
    b.compression = uWS::DISABLED;
    b.maxPayloadLength = 64 * 1024 * 1024;
    b.idleTimeout = 120;
    b.maxBackpressure = 16 * 1024 * 1024;
    b.closeOnBackpressureLimit = false;
    b.resetIdleTimeoutOnSend = false;
    b.sendPingsAutomatically = true;
    return b;
}

}  // namespace

int main(int argc, char **argv) {
    std::string host = "127.0.0.1";
    int port = 9400;
    for (int i = 1; i < argc; i++) {
        if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help")) {
            usage(argv[0], 0);
        } else if (!std::strcmp(argv[i], "--addr") && i + 1 < argc) {
            std::string addr = argv[++i];
            size_t colon = addr.rfind(':');
            if (colon == std::string::npos) {
                usage(argv[0], 2);
            }
            host = addr.substr(0, colon);
            char *end = nullptr;
            long p = std::strtol(addr.c_str() + colon + 1, &end, 10);
            if (*end || p < 0 || p > 65535) {
                usage(argv[0], 2);
            }
            port = static_cast<int>(p);
        } else {
            usage(argv[0], 2);
        }
    }

    uWS::App app;
    uWS::App *server = &app;

    uWS::App::WebSocketBehavior<Conn> echo = limits(uWS::App::WebSocketBehavior<Conn>{});
    echo.message = [](auto *ws, std::string_view message, uWS::OpCode op) {
        ws->send(message, op, false);
    };

    uWS::App::WebSocketBehavior<Conn> chat = limits(uWS::App::WebSocketBehavior<Conn>{});
    chat.upgrade = [](auto *res, auto *req, auto *context) {
        std::string_view room = req->getQuery("room");
        res->template upgrade<Conn>({.room = room.empty() ? std::string("chat") : std::string(room)},
                                    req->getHeader("sec-websocket-key"),
                                    req->getHeader("sec-websocket-protocol"),
                                    req->getHeader("sec-websocket-extensions"), context);
    };
    chat.open = [](auto *ws) { ws->subscribe(ws->getUserData()->room); };
    chat.message = [server](auto *ws, std::string_view message, uWS::OpCode op) {
        if (op == uWS::OpCode::TEXT) {
            server->publish(ws->getUserData()->room, message, op, false);
        }
    };

    app.ws<Conn>("/echo", std::move(echo))
        .ws<Conn>("/chat", std::move(chat))
        .any("/*", [](auto *res, auto * /*req*/) { res->writeStatus("404 Not Found")->end("not found\n"); })
        .listen(host, port, [&](auto *listen_socket) {
            if (listen_socket) {
                int bound = us_socket_local_port(0, (struct us_socket_t *) listen_socket);
                std::fprintf(stderr, "listening on ws://%s:%d (uWebSockets, one thread)\n", host.c_str(),
                             bound);
            } else {
                std::fprintf(stderr, "peer-uws: cannot listen on %s:%d\n", host.c_str(), port);
                std::exit(1);
            }
        })
        .run();
    return 0;
}
