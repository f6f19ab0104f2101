// chat.cpp: a Sockeye chat server in C++ (through include/sockeye.hpp). Every text line a
// client sends on ws://127.0.0.1:PORT/chat goes to every /chat connection on every worker,
// the sender included; binary messages are refused with close 1003. Stops gracefully on
// SIGINT or SIGTERM.
//
//   c++ -std=c++17 -O2 -o chat chat.cpp $(pkg-config --cflags --libs sockeye) -lpthread
//   ./chat [PORT [WORKERS]]        (or SOCKEYE_PORT / SOCKEYE_WORKERS; default 2 workers)
//
// Connections live on different worker threads, so the relay names them by id: every id is
// kept in one mutex-protected set, and each line is sent with Server::send_text (the
// thread-safe sockeye_server_send), which hands it to whichever worker holds the connection.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include <sockeye.hpp>

class Chat : public sockeye::Handler {
public:
    sockeye::Server *server = nullptr;  // set before run(); callbacks only happen during run()

    std::uint16_t on_upgrade(sockeye::Request &req, sockeye::Upgrade &) override {
        return req.path() == "/chat" ? SOCKEYE_UPGRADE_ACCEPT : 404;
    }

    void on_open(sockeye::Conn &conn) override {
        std::lock_guard<std::mutex> lock(mu_);
        members_.insert(conn.id());
    }

    void on_message(sockeye::Conn &conn, sockeye::Opcode op, std::string_view line) override {
        if (op != sockeye::Opcode::Text) {
            conn.close(1003, "chat takes text");
            return;
        }
        std::vector<std::uint64_t> to;
        {
            std::lock_guard<std::mutex> lock(mu_);
            to.assign(members_.begin(), members_.end());
        }
        for (std::uint64_t id : to) server->send_text(id, line);  // copies `line`
    }

    void on_close(sockeye::Conn &conn, std::uint16_t, std::string_view) override {
        std::lock_guard<std::mutex> lock(mu_);
        members_.erase(conn.id());
    }

private:
    std::mutex mu_;
    std::unordered_set<std::uint64_t> members_;
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
        chat.server = &server;
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
