// chat.cpp: a Sockeye chat server in C++ (through include/sockeye.hpp). Every text line a
// client sends on ws://127.0.0.1:PORT/chat goes to every /chat connection on every worker,
// the sender included; binary messages are refused with close 1003. GET / answers a short
// text page. Stops gracefully on SIGINT or SIGTERM.
//
//   c++ -std=c++17 -O2 -pthread -o chat chat.cpp $(pkg-config --cflags --libs sockeye)
//   ./chat [PORT [WORKERS]]        (or SOCKEYE_PORT / SOCKEYE_WORKERS; default 2 workers)
//
// The room is a topic: each connection subscribes to it when it opens, and each line is
// published to it with Conn::publish_including_self. The engine does the fan-out: the frame is
// built once per worker, reaches the subscribers on every worker, and a subscription ends with
// its connection, so the program keeps no list of members and no lock.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <thread>

#include <sockeye.hpp>

static constexpr std::string_view ROOM = "chat";

class Chat : public sockeye::Handler {
public:
    std::uint16_t on_upgrade(sockeye::Request &req, sockeye::Upgrade &) override {
        return req.path() == "/chat" ? SOCKEYE_UPGRADE_ACCEPT : 404;
    }

    std::uint16_t on_http(sockeye::Request &req, sockeye::HttpResponse &resp) override {
        if (req.path() != "/") return 0;  // the default 400
        resp.body("text/plain", "chat: connect to ws://HOST/chat\n");
        resp.header("Cache-Control", "no-store");
        return 200;
    }

    void on_open(sockeye::Conn &conn) override {
        if (conn.subscribe(ROOM) != SOCKEYE_OK) conn.close(1011, "cannot join the room");
    }

    void on_message(sockeye::Conn &conn, sockeye::Opcode op, std::string_view line) override {
        if (op != sockeye::Opcode::Text) {
            conn.close(1003, "chat takes text");
            return;
        }
        conn.publish_including_self(ROOM, sockeye::Opcode::Text, line);  // copies `line`
    }
};

static long arg_or_env(int argc, char **argv, int i, const char *env, long dflt) {
    const char *s = i < argc ? argv[i] : std::getenv(env);
    return (s && *s) ? std::strtol(s, nullptr, 10) : dflt;
}

int main(int argc, char **argv) {
    long port = arg_or_env(argc, argv, 1, "SOCKEYE_PORT", 9003);
    long workers = arg_or_env(argc, argv, 2, "SOCKEYE_WORKERS", 2);
    if (port < 0 || port > 65535 || workers < 0) {
        std::fprintf(stderr, "usage: %s [PORT [WORKERS]]\n", argv[0]);
        return 2;
    }

    // Block SIGINT/SIGTERM in every thread (workers inherit the mask); one thread takes them
    // with sigwait and calls the thread-safe, but not async-signal-safe, stop().
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

    Chat chat;
    try {
        sockeye::Server server(sockeye::Config()
                                   .address("127.0.0.1")
                                   .port(static_cast<std::uint16_t>(port))
                                   .workers(static_cast<std::uint32_t>(workers)),
                               chat);
        std::printf("listening on ws://127.0.0.1:%u/chat (%zu workers)\n", unsigned(server.port()),
                    server.workers());
        std::fflush(stdout);

        std::atomic<bool> signalled{false};
        std::thread waiter([&] {
            int sig = 0;
            if (sigwait(&sigs, &sig) == 0) server.stop();
            signalled = true;
        });
        try {
            server.run();
        } catch (...) {
            if (!signalled) pthread_kill(waiter.native_handle(), SIGTERM);
            waiter.join();
            throw;
        }
        if (!signalled) pthread_kill(waiter.native_handle(), SIGTERM);
        waiter.join();
    } catch (const sockeye::Error &e) {
        std::fprintf(stderr, "chat: %s\n", e.what());
        return 1;
    }
    std::printf("stopped\n");
    return 0;
}
