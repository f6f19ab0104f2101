// wrapper.cpp: the parts of include/sockeye.hpp the examples do not reach, instantiated and
// run (built with ASan/UBSan by tests/c/run.sh): Server::post with a Worker on every worker,
// a post that never runs (its functor is destroyed, not called), a refused post, stats, and
// every Handler override compiling. Prints one line per check; exits 1 if any failed.
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <sockeye.hpp>

static int failures = 0;

static void check(bool ok, const char *what) {
    std::printf("%s %s\n", ok ? "ok" : "FAIL", what);
    if (!ok) failures++;
}

// Every callback overridden: they must compile against the wrapper's signatures.
struct Everything : sockeye::Handler {
    std::uint16_t on_upgrade(sockeye::Request &req, sockeye::Upgrade &up) override {
        for (std::string_view p : req.protocols()) {
            if (p == "x") up.set_protocol("x");
        }
        return SOCKEYE_UPGRADE_ACCEPT;
    }
    std::uint16_t on_http(sockeye::Request &, sockeye::HttpResponse &resp) override {
        resp.body("text/plain", "ok");
        resp.header("X-A", "b");
        return 200;
    }
    void on_open(sockeye::Conn &conn) override {
        peer = conn.peer_addr();
        (void)conn.worker();
        (void)conn.server();
    }
    void on_message(sockeye::Conn &, sockeye::Opcode, std::string_view) override {}
    void on_ping(sockeye::Conn &, std::string_view) override {}
    void on_pong(sockeye::Conn &, std::string_view) override {}
    std::string peer;
};

// Counts its destructions: a post's functor must be destroyed exactly once, run or not.
struct Token {
    std::atomic<int> *destroyed;
    explicit Token(std::atomic<int> *d) : destroyed(d) {}
    Token(const Token &) = delete;
    Token(Token &&o) noexcept : destroyed(o.destroyed) { o.destroyed = nullptr; }
    ~Token() {
        if (destroyed) (*destroyed)++;
    }
};

int main() {
    Everything handler;
    {
        sockeye::Server server(sockeye::Config().address("127.0.0.1").port(0).workers(2), handler);
        std::atomic<int> ran{0}, wrong{0}, destroyed{0};
        // Posted before run: they wait in the workers' channels and run once the workers do.
        for (std::size_t w = 0; w < server.workers(); w++) {
            auto tok = std::make_shared<Token>(&destroyed);
            sockeye_result r = server.post(w, [&, w, tok](sockeye::Worker &worker) {
                if (worker.index() == w && worker.server() == server.get()) {
                    ran++;
                } else {
                    wrong++;
                }
                // A send to an id that names no connection: not an error, nothing sent.
                (void)worker.send_text(0, "nobody");
            });
            check(r == SOCKEYE_OK, "post to each worker before run");
        }
        // The last post stops the server; the others were queued before it, so they ran.
        check(server.post(1, [&server](sockeye::Worker &) { server.stop(); }) == SOCKEYE_OK,
              "post a stop");
        check(server.post(7, [](sockeye::Worker &) {}) == SOCKEYE_ERR_INVALID_ARGUMENT,
              "post to a worker that does not exist is refused");
        server.run();
        check(ran == 2 && wrong == 0, "each post ran once, on its worker, with its server");
        check(destroyed == 2, "each functor destroyed once after it ran");
        check(server.post(0, [](sockeye::Worker &) {}) == SOCKEYE_ERR_STOPPED,
              "post after the stop is refused");
        sockeye_stats st = server.stats(0);
        check(st.connections == 0, "stats of worker 0");
        bool threw = false;
        try {
            (void)server.stats(9);
        } catch (const sockeye::Error &e) {
            threw = e.code() == SOCKEYE_ERR_INVALID_ARGUMENT;
        }
        check(threw, "stats of a worker that does not exist throws");
    }
    {
        // Never run: the queued post is destroyed with the server, without running.
        std::atomic<int> ran{0}, destroyed{0};
        {
            sockeye::Server server(sockeye::Config().address("127.0.0.1").port(0).workers(1),
                                   handler);
            auto tok = std::make_shared<Token>(&destroyed);
            check(server.post(0, [&ran, tok](sockeye::Worker &) { ran++; }) == SOCKEYE_OK,
                  "post to a server that will never run");
        }
        check(ran == 0 && destroyed == 1, "a post that could not run is destroyed, not called");
    }
    std::printf("wrapper: %d failed\n", failures);
    return failures == 0 ? 0 : 1;
}
