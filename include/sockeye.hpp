// sockeye.hpp: a small RAII C++17 wrapper over the C API in sockeye.h (hand-written; the C
// header is generated). Header-only: link with libsockeye as for C.
//
//   struct Echo : sockeye::Handler {
//       void on_message(sockeye::Conn &c, sockeye::Opcode op, std::string_view data) override {
//           c.send(op, data);
//       }
//   };
//   Echo echo;
//   sockeye::Server server(sockeye::Config().port(8080), echo);
//   server.run();  // blocks; server.stop() from another thread ends it
//
// It covers the whole C API: every callback (on_upgrade, on_http, on_open, on_message,
// on_ping, on_pong, on_drain, on_close), the request (path, query, headers, every offered
// subprotocol), the connection (send, ping, close, id, worker, peer address, user data, its
// server, subscribe and publish), and the server's thread-safe calls (send and close by id,
// publish, post to a worker, stats, stop).
//
// Ownership is the C API's: a Server owns its sockeye_server (freed by the destructor);
// Request, Upgrade, HttpResponse, Conn and Worker are views valid only inside the callback that
// received them; the Handler is borrowed and must outlive the Server. Handler methods run on
// worker threads, concurrently when there are several workers. An exception escaping a Handler method is
// caught at the boundary (it must never unwind into the library): a throwing on_upgrade
// rejects with 500, any other closes the connection with 1011.
#ifndef SOCKEYE_HPP
#define SOCKEYE_HPP

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <sockeye.h>

namespace sockeye {

/// A failed call, with its sockeye_result.
class Error : public std::runtime_error {
public:
    Error(sockeye_result code, const std::string &what)
        : std::runtime_error(what + ": " + sockeye_strerror(code)), code_(code) {}
    sockeye_result code() const noexcept { return code_; }

private:
    sockeye_result code_;
};

enum class Opcode : sockeye_opcode { Text = SOCKEYE_OPCODE_TEXT, Binary = SOCKEYE_OPCODE_BINARY };

/// An upgrade request: a view valid only inside Handler::on_upgrade.
class Request {
public:
    explicit Request(const sockeye_request *r) noexcept : r_(r) {}
    std::string_view path() const noexcept {
        const char *p = sockeye_request_path(r_, &len_);
        return view(p, len_);
    }
    std::optional<std::string_view> query() const noexcept {
        const char *q = sockeye_request_query(r_, &len_);
        return q ? std::optional<std::string_view>(view(q, len_)) : std::nullopt;
    }
    /// The first header called `name` (case-insensitive), if any.
    std::optional<std::string_view> header(const char *name) const noexcept {
        const char *v = sockeye_request_header(r_, name, &len_);
        return v ? std::optional<std::string_view>(view(v, len_)) : std::nullopt;
    }
    /// Every subprotocol the client offers, over all its Sec-WebSocket-Protocol headers, in
    /// order (views valid during the callback).
    std::vector<std::string_view> protocols() const {
        std::vector<std::string_view> out;
        std::size_t n = sockeye_request_protocol_count(r_);
        out.reserve(n);
        for (std::size_t i = 0; i < n; i++) {
            std::size_t len = 0;
            const char *p = sockeye_request_protocol(r_, i, &len);
            if (p) out.emplace_back(p, len);
        }
        return out;
    }

private:
    static std::string_view view(const char *p, std::size_t n) noexcept {
        return p ? std::string_view(p, n) : std::string_view();
    }
    const sockeye_request *r_;
    mutable std::size_t len_ = 0;
};

/// The answer to an upgrade request: a view valid only inside Handler::on_upgrade.
class Upgrade {
public:
    explicit Upgrade(sockeye_upgrade *u) noexcept : u_(u) {}
    /// The connection's user data (yours: free it in on_close).
    void set_user_data(void *p) noexcept { sockeye_upgrade_set_user_data(u_, p); }
    /// Confirms a subprotocol the client offered; false if it did not offer it.
    bool set_protocol(const char *p) noexcept { return sockeye_upgrade_set_protocol(u_, p) == SOCKEYE_OK; }

private:
    sockeye_upgrade *u_;
};

/// The answer to a plain HTTP GET: a view valid only inside Handler::on_http, whose return
/// value is the status.
class HttpResponse {
public:
    explicit HttpResponse(sockeye_http_response *r) noexcept : r_(r) {}
    /// The Content-Type and the body (both copied).
    sockeye_result body(const char *content_type, std::string_view body) noexcept {
        return sockeye_http_response_set_body(
            r_, content_type, reinterpret_cast<const std::uint8_t *>(body.data()), body.size());
    }
    /// Adds a header (copied; the ones the engine owns are left out on the wire).
    sockeye_result header(const char *name, const char *value) noexcept {
        return sockeye_http_response_add_header(r_, name, value);
    }

private:
    sockeye_http_response *r_;
};

/// A connection: a view valid only inside the callback that received it. Keep id() to reach
/// the connection later or from another thread through Server::send, or subscribe it to a
/// topic and reach every subscriber with publish (here) or Server::publish (any thread).
class Conn {
public:
    explicit Conn(sockeye_conn *c) noexcept : c_(c) {}
    /// Never 0; bits 63..52 are the worker's index (see sockeye_conn_id).
    std::uint64_t id() const noexcept { return sockeye_conn_id(c_); }
    /// The worker that holds the connection and runs its callbacks.
    std::size_t worker() const noexcept { return sockeye_conn_worker(c_); }
    /// The peer's address, "IP:PORT" or "[IPv6]:PORT" (empty if it cannot be read).
    std::string peer_addr() const {
        char buf[SOCKEYE_PEER_ADDR_MAX];
        std::size_t len = 0;
        if (sockeye_conn_peer_addr(c_, buf, sizeof buf, &len) != SOCKEYE_OK) return {};
        return std::string(buf, len);
    }
    /// The server the connection belongs to (not owned: never free it).
    sockeye_server *server() const noexcept { return sockeye_conn_server(c_); }
    sockeye_send_status send(Opcode op, std::string_view data) noexcept {
        return sockeye_conn_send(c_, static_cast<sockeye_opcode>(op),
                                 reinterpret_cast<const std::uint8_t *>(data.data()), data.size());
    }
    sockeye_send_status send_text(std::string_view text) noexcept { return send(Opcode::Text, text); }
    sockeye_send_status send_binary(std::string_view data) noexcept { return send(Opcode::Binary, data); }
    sockeye_send_status ping(std::string_view data = {}) noexcept {
        return sockeye_conn_ping(c_, reinterpret_cast<const std::uint8_t *>(data.data()), data.size());
    }
    /// Starts the close handshake; `reason` is NUL-terminated UTF-8 or null.
    sockeye_result close(std::uint16_t code = 1000, const char *reason = nullptr) noexcept {
        return sockeye_conn_close(c_, code, reason);
    }
    std::size_t buffered_amount() const noexcept { return sockeye_conn_buffered_amount(c_); }
    void *user_data() const noexcept { return sockeye_conn_user_data(c_); }
    void set_user_data(void *p) noexcept { sockeye_conn_set_user_data(c_, p); }

    /// Subscribes to `topic` (any bytes, copied). SOCKEYE_OK also when already subscribed;
    /// SOCKEYE_ERR_TOPIC_TOO_LONG over max_topic_len, SOCKEYE_ERR_CLOSED once closing.
    sockeye_result subscribe(std::string_view topic) noexcept {
        return sockeye_conn_subscribe(c_, topic.data(), topic.size());
    }
    /// False if it was not subscribed.
    bool unsubscribe(std::string_view topic) noexcept {
        return sockeye_conn_unsubscribe(c_, topic.data(), topic.size());
    }
    bool is_subscribed(std::string_view topic) const noexcept {
        return sockeye_conn_is_subscribed(c_, topic.data(), topic.size());
    }
    /// Publishes to every subscriber of `topic` on every worker but this connection (copied).
    sockeye_result publish(std::string_view topic, Opcode op, std::string_view data) noexcept {
        return sockeye_conn_publish(c_, topic.data(), topic.size(), static_cast<sockeye_opcode>(op),
                                    reinterpret_cast<const std::uint8_t *>(data.data()), data.size());
    }
    /// Publishes to every subscriber of `topic`, this connection included if it is one.
    sockeye_result publish_including_self(std::string_view topic, Opcode op, std::string_view data) noexcept {
        return sockeye_conn_publish_including_self(
            c_, topic.data(), topic.size(), static_cast<sockeye_opcode>(op),
            reinterpret_cast<const std::uint8_t *>(data.data()), data.size());
    }
    /// Subscribers of `topic` on this connection's worker (Server::subscriber_count: all).
    std::size_t subscriber_count(std::string_view topic) const noexcept {
        return sockeye_conn_subscriber_count(c_, topic.data(), topic.size());
    }
    sockeye_conn *get() const noexcept { return c_; }

private:
    sockeye_conn *c_;
};

/// A worker, as a callback posted with Server::post sees it: a view valid only during that
/// callback, on the worker's thread.
class Worker {
public:
    explicit Worker(sockeye_worker *w) noexcept : w_(w) {}
    std::size_t index() const noexcept { return sockeye_worker_index(w_); }
    /// Sends to a connection by id: queued at once if this worker holds it, else forwarded
    /// to the one that does (SOCKEYE_SEND_FORWARDED). The data is copied.
    sockeye_send_status send(std::uint64_t id, Opcode op, std::string_view data) noexcept {
        return sockeye_worker_send(w_, id, static_cast<sockeye_opcode>(op),
                                   reinterpret_cast<const std::uint8_t *>(data.data()), data.size());
    }
    sockeye_send_status send_text(std::uint64_t id, std::string_view text) noexcept {
        return send(id, Opcode::Text, text);
    }
    sockeye_server *server() const noexcept { return sockeye_worker_server(w_); }
    sockeye_worker *get() const noexcept { return w_; }

private:
    sockeye_worker *w_;
};

/// The application: override what you need. Methods run on worker threads, several at once
/// when there are several workers, and must not block.
class Handler {
public:
    virtual ~Handler() = default;
    /// Return SOCKEYE_UPGRADE_ACCEPT, or an HTTP status (400..599) to reject.
    virtual std::uint16_t on_upgrade(Request &, Upgrade &) { return SOCKEYE_UPGRADE_ACCEPT; }
    /// A plain HTTP GET: return 0 to decline (400), or the status after filling `response`.
    virtual std::uint16_t on_http(Request &, HttpResponse &) { return 0; }
    virtual void on_open(Conn &) {}
    /// `data` is lent for this call only.
    virtual void on_message(Conn &, Opcode, std::string_view) {}
    /// A ping arrived (the pong is already queued).
    virtual void on_ping(Conn &, std::string_view /*payload*/) {}
    virtual void on_pong(Conn &, std::string_view /*payload*/) {}
    virtual void on_drain(Conn &) {}
    virtual void on_close(Conn &, std::uint16_t /*code*/, std::string_view /*reason*/) {}
};

/// Server settings, starting from sockeye_config_default().
class Config {
public:
    Config() noexcept { sockeye_config_default(&c_); }
    Config &address(std::string a) {
        address_ = std::move(a);
        return *this;
    }
    Config &port(std::uint16_t p) noexcept {
        c_.port = p;
        return *this;
    }
    Config &workers(std::uint32_t n) noexcept {
        c_.workers = n;
        return *this;
    }
    Config &backend(sockeye_backend b) noexcept {
        c_.backend = b;
        return *this;
    }
    /// Every other field (limits, timeouts), as in sockeye.h.
    sockeye_config &raw() noexcept { return c_; }
    /// The C struct, pointing at this object's address string.
    const sockeye_config *get() const noexcept {
        if (!address_.empty()) c_.address = address_.c_str();
        return &c_;
    }

private:
    mutable sockeye_config c_;
    std::string address_;
};

/// Owns a sockeye_server. Binds in the constructor (throws Error), runs in run().
class Server {
public:
    /// `handler` is borrowed: it must outlive this Server.
    Server(const Config &config, Handler &handler) {
        sockeye_callbacks cb{};
        cb.on_upgrade = &Server::t_upgrade;
        cb.on_open = &Server::t_open;
        cb.on_message = &Server::t_message;
        cb.on_drain = &Server::t_drain;
        cb.on_close = &Server::t_close;
        cb.on_ping = &Server::t_ping;
        cb.on_pong = &Server::t_pong;
        cb.on_http = &Server::t_http;
        sockeye_result r = sockeye_server_new(config.get(), &cb, &handler, &s_);
        if (r != SOCKEYE_OK) throw Error(r, "sockeye_server_new");
    }
    ~Server() { sockeye_server_free(s_); }
    Server(const Server &) = delete;
    Server &operator=(const Server &) = delete;
    Server(Server &&o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
    Server &operator=(Server &&o) noexcept {
        if (this != &o) {
            sockeye_server_free(s_);
            s_ = std::exchange(o.s_, nullptr);
        }
        return *this;
    }

    /// Runs the workers; blocks until stop() (from any thread) has completed. Throws Error.
    void run() {
        sockeye_result r = sockeye_server_run(s_);
        if (r != SOCKEYE_OK) throw Error(r, "sockeye_server_run");
    }
    /// Graceful shutdown; thread-safe, not async-signal-safe.
    void stop() noexcept { sockeye_server_stop(s_); }
    std::uint16_t port() const noexcept { return sockeye_server_local_port(s_); }
    std::size_t workers() const noexcept { return sockeye_server_worker_count(s_); }
    /// Sends to any connection by id, from any thread (the data is copied).
    sockeye_result send(std::uint64_t id, Opcode op, std::string_view data) noexcept {
        return sockeye_server_send(s_, id, static_cast<sockeye_opcode>(op),
                                   reinterpret_cast<const std::uint8_t *>(data.data()), data.size());
    }
    sockeye_result send_text(std::uint64_t id, std::string_view text) noexcept { return send(id, Opcode::Text, text); }
    /// Closes any connection by id, from any thread.
    sockeye_result close(std::uint64_t id, std::uint16_t code = 1000, const char *reason = nullptr) noexcept {
        return sockeye_server_close_conn(s_, id, code, reason);
    }
    /// Publishes to every subscriber of `topic` on every worker, from any thread (copied).
    sockeye_result publish(std::string_view topic, Opcode op, std::string_view data) noexcept {
        return sockeye_server_publish(s_, topic.data(), topic.size(), static_cast<sockeye_opcode>(op),
                                      reinterpret_cast<const std::uint8_t *>(data.data()), data.size());
    }
    sockeye_result publish_text(std::string_view topic, std::string_view text) noexcept {
        return publish(topic, Opcode::Text, text);
    }
    /// Subscribers of `topic` over all workers; thread-safe.
    std::size_t subscriber_count(std::string_view topic) const noexcept {
        return sockeye_server_subscriber_count(s_, topic.data(), topic.size());
    }
    /// Runs `f(Worker &)` on worker `worker` in its next loop turn, from any thread (callbacks
    /// included). `f` is moved to the heap and destroyed after it ran, or without running if
    /// the server stops first or the post is refused (the result says why). An exception
    /// escaping `f` is swallowed at the boundary.
    template <class F>
    sockeye_result post(std::size_t worker, F &&f) {
        using Fn = std::decay_t<F>;
        Fn *heap = new Fn(std::forward<F>(f));
        sockeye_result r = sockeye_server_post(s_, worker, &Server::t_post<Fn>, heap);
        if (r != SOCKEYE_OK) delete heap;  // refused: never called, still ours
        return r;
    }
    /// Worker `worker`'s counters. Throws Error for a worker that does not exist.
    sockeye_stats stats(std::size_t worker) const {
        sockeye_stats st{};
        sockeye_result r = sockeye_server_stats(s_, worker, &st);
        if (r != SOCKEYE_OK) throw Error(r, "sockeye_server_stats");
        return st;
    }
    sockeye_server *get() const noexcept { return s_; }

private:
    static Handler &h(void *ud) noexcept { return *static_cast<Handler *>(ud); }
    static void fail(sockeye_conn *c) noexcept { sockeye_conn_close(c, 1011, "internal error"); }

    static std::uint16_t t_upgrade(void *ud, const sockeye_request *r, sockeye_upgrade *u) noexcept {
        try {
            Request req(r);
            Upgrade up(u);
            return h(ud).on_upgrade(req, up);
        } catch (...) {
            return 500;
        }
    }
    static void t_open(void *ud, sockeye_conn *c) noexcept {
        try {
            Conn conn(c);
            h(ud).on_open(conn);
        } catch (...) {
            fail(c);
        }
    }
    static void t_message(void *ud, sockeye_conn *c, sockeye_opcode op, const std::uint8_t *d,
                          std::size_t n) noexcept {
        try {
            Conn conn(c);
            h(ud).on_message(conn, static_cast<Opcode>(op),
                             std::string_view(reinterpret_cast<const char *>(d), n));
        } catch (...) {
            fail(c);
        }
    }
    static std::uint16_t t_http(void *ud, const sockeye_request *r, sockeye_http_response *p) noexcept {
        try {
            Request req(r);
            HttpResponse resp(p);
            return h(ud).on_http(req, resp);
        } catch (...) {
            return 500;
        }
    }
    static void t_ping(void *ud, sockeye_conn *c, const std::uint8_t *d, std::size_t n) noexcept {
        try {
            Conn conn(c);
            h(ud).on_ping(conn, std::string_view(reinterpret_cast<const char *>(d), n));
        } catch (...) {
            fail(c);
        }
    }
    static void t_pong(void *ud, sockeye_conn *c, const std::uint8_t *d, std::size_t n) noexcept {
        try {
            Conn conn(c);
            h(ud).on_pong(conn, std::string_view(reinterpret_cast<const char *>(d), n));
        } catch (...) {
            fail(c);
        }
    }
    template <class Fn>
    static void t_post(void *, sockeye_worker *w, void *arg) noexcept {
        Fn *f = static_cast<Fn *>(arg);
        if (w) {
            try {
                Worker worker(w);
                (*f)(worker);
            } catch (...) {
            }
        }
        delete f;
    }
    static void t_drain(void *ud, sockeye_conn *c) noexcept {
        try {
            Conn conn(c);
            h(ud).on_drain(conn);
        } catch (...) {
            fail(c);
        }
    }
    static void t_close(void *ud, sockeye_conn *c, std::uint16_t code, const char *reason,
                        std::size_t n) noexcept {
        try {
            Conn conn(c);
            h(ud).on_close(conn, code, std::string_view(reason, n));
        } catch (...) {
        }
    }

    sockeye_server *s_ = nullptr;
};

}  // namespace sockeye

#endif  // SOCKEYE_HPP
