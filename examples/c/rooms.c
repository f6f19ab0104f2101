/*
 * rooms.c: chat rooms in C, the twin of engine/examples/rooms.rs.
 *
 *   cc -std=c11 -O2 -pthread -o rooms rooms.c $(pkg-config --cflags --libs sockeye)
 *   ./rooms [PORT [WORKERS]]       (or SOCKEYE_PORT / SOCKEYE_WORKERS; port 0 picks one)
 *
 * Clients connect to ws://127.0.0.1:PORT/rooms/NAME?nick=NICK. Every text line a member
 * sends goes to every member of the room, on every worker, the sender included; joins and
 * leaves are announced ("* alice joined"). What it shows:
 *
 * - rejection with a status: another path gets 404; a bad room or nick name (1 to 32 of
 *   A-Z a-z 0-9 _ -), or an offer of only subprotocols we do not speak, 400; a browser page
 *   from another site (an Origin that is not this server's Host) 403;
 * - subprotocol choice among every one the client offers: rooms.v2 (lines prefixed with the
 *   room: "[lobby] alice: hi") before rooms.v1 ("alice: hi"); no offer at all gets v1;
 * - per-connection data: a struct member, set in on_upgrade, freed in on_close;
 * - fan-out across workers without a lock: each worker keeps the members it holds in its own
 *   list (indexed by sockeye_conn_worker); a line is posted to every worker
 *   (sockeye_server_post), and each worker's posted callback sends it to its own members
 *   (sockeye_worker_send). Each worker's list is only touched on that worker's thread;
 * - plain HTTP on the same port: GET / answers a short text page with a header of its own.
 *
 * Binary messages are refused with close 1003. Stops gracefully on SIGINT or SIGTERM. It
 * prints "listening on ws://127.0.0.1:PORT/rooms/NAME?nick=NICK" once the port is bound.
 */
#define _POSIX_C_SOURCE 200809L /* sigwait, pthread_sigmask, pthread_kill, strdup */

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sockeye.h>

#define NAME_MAX_LEN 32

/* A connection's own data: allocated in on_upgrade, freed in on_close. */
struct member {
    char room[NAME_MAX_LEN + 1];
    char nick[NAME_MAX_LEN + 1];
    int v2; /* rooms.v2: lines prefixed with "[room] " */
};

/* One worker's members: only that worker's thread touches it. */
struct worker_state {
    uint64_t *ids;
    struct member **members;
    size_t len, cap;
};

/* The server-wide user data. */
struct app {
    struct worker_state *workers;
    size_t worker_count;
};

/* A line on its way to one worker (each worker gets its own copy, freed by the callback). */
struct line {
    char room[NAME_MAX_LEN + 1];
    size_t len;
    char text[]; /* len bytes, then a NUL */
};

static int valid_name(const char *s, size_t len) {
    if (len < 1 || len > NAME_MAX_LEN) return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '-';
        if (!ok) return 0;
    }
    return 1;
}

/* The value of `key` in a query string ("a=1&nick=bob"), undecoded; its length in *len. */
static const char *query_param(const char *query, const char *key, size_t *len) {
    size_t klen = strlen(key);
    for (const char *p = query; p && *p;) {
        const char *end = strchr(p, '&');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            *len = n - klen - 1;
            return p + klen + 1;
        }
        p = end ? end + 1 : NULL;
    }
    return NULL;
}

/* Whether a browser's Origin names this server (scheme stripped, compared with Host). Clients
 * that are not browsers send no Origin: nothing to check. */
static int same_origin(const sockeye_request *req) {
    const char *origin = sockeye_request_header(req, "Origin", NULL);
    if (!origin) return 1;
    const char *host = sockeye_request_header(req, "Host", NULL);
    const char *authority = strstr(origin, "://");
    authority = authority ? authority + 3 : origin;
    return host && strcasecmp(host, authority) == 0;
}

static uint16_t on_upgrade(void *user_data, const sockeye_request *req, sockeye_upgrade *up) {
    (void)user_data;
    size_t path_len = 0, nick_len = 0;
    const char *path = sockeye_request_path(req, &path_len);
    const char *prefix = "/rooms/";
    if (!path || strncmp(path, prefix, strlen(prefix)) != 0) return 404;
    const char *room = path + strlen(prefix);
    size_t room_len = path_len - strlen(prefix);
    const char *nick = query_param(sockeye_request_query(req, NULL), "nick", &nick_len);
    if (!valid_name(room, room_len) || !nick || !valid_name(nick, nick_len)) return 400;
    if (!same_origin(req)) return 403;

    /* Our preference among everything offered (all Sec-WebSocket-Protocol headers). */
    size_t offered = sockeye_request_protocol_count(req);
    const char *chosen = NULL;
    static const char *const ours[] = {"rooms.v2", "rooms.v1"};
    for (size_t k = 0; k < 2 && !chosen; k++) {
        for (size_t i = 0; i < offered; i++) {
            if (strcmp(sockeye_request_protocol(req, i, NULL), ours[k]) == 0) chosen = ours[k];
        }
    }
    if (!chosen && offered > 0) return 400; /* it would fail a connection without one */

    struct member *m = calloc(1, sizeof *m);
    if (!m) return 503;
    memcpy(m->room, room, room_len);
    memcpy(m->nick, nick, nick_len);
    m->v2 = chosen && strcmp(chosen, "rooms.v2") == 0;
    if (chosen && sockeye_upgrade_set_protocol(up, chosen) != SOCKEYE_OK) {
        free(m);
        return 500;
    }
    sockeye_upgrade_set_user_data(up, m);
    return SOCKEYE_UPGRADE_ACCEPT;
}

static uint16_t on_http(void *user_data, const sockeye_request *req, sockeye_http_response *resp) {
    (void)user_data;
    const char *path = sockeye_request_path(req, NULL);
    if (!path || strcmp(path, "/") != 0) return 0; /* the default 400 */
    static const char page[] =
        "rooms: connect to ws://HOST/rooms/NAME?nick=NICK (subprotocols rooms.v2, rooms.v1)\n";
    sockeye_http_response_set_body(resp, "text/plain; charset=utf-8", (const uint8_t *)page,
                                   sizeof page - 1);
    sockeye_http_response_add_header(resp, "Cache-Control", "no-store");
    return 200;
}

/* Runs on the worker it was posted to: sends the line to that worker's members of its room. */
static void deliver(void *user_data, sockeye_worker *worker, void *arg) {
    struct line *l = arg;
    if (worker) { /* NULL: the server stopped before this worker could run it */
        struct app *app = user_data;
        struct worker_state *w = &app->workers[sockeye_worker_index(worker)];
        size_t cap = l->len + NAME_MAX_LEN + 4;
        char *v2 = malloc(cap);
        int n = v2 ? snprintf(v2, cap, "[%s] %s", l->room, l->text) : -1;
        for (size_t i = 0; i < w->len; i++) {
            if (strcmp(w->members[i]->room, l->room) != 0) continue;
            if (w->members[i]->v2 && n >= 0) {
                sockeye_worker_send(worker, w->ids[i], SOCKEYE_OPCODE_TEXT, (const uint8_t *)v2,
                                    (size_t)n);
            } else {
                sockeye_worker_send(worker, w->ids[i], SOCKEYE_OPCODE_TEXT,
                                    (const uint8_t *)l->text, l->len);
            }
        }
        free(v2);
    }
    free(l);
}

/* Posts "text" (len bytes) for `room` to every worker, this one included. */
static void broadcast(sockeye_conn *conn, const char *room, const char *text, size_t len) {
    sockeye_server *server = sockeye_conn_server(conn);
    size_t workers = sockeye_server_worker_count(server);
    for (size_t w = 0; w < workers; w++) {
        struct line *l = malloc(sizeof *l + len + 1);
        if (!l) continue;
        snprintf(l->room, sizeof l->room, "%s", room);
        memcpy(l->text, text, len);
        l->text[len] = '\0';
        l->len = len;
        /* On success the callback owns `l` (it runs exactly once); on failure we still do. */
        if (sockeye_server_post(server, w, deliver, l) != SOCKEYE_OK) free(l);
    }
}

static void announce(sockeye_conn *conn, const struct member *m, const char *what) {
    char text[2 * NAME_MAX_LEN + 16];
    int n = snprintf(text, sizeof text, "* %s %s", m->nick, what);
    broadcast(conn, m->room, text, (size_t)n);
}

static void on_open(void *user_data, sockeye_conn *conn) {
    struct app *app = user_data;
    struct member *m = sockeye_conn_user_data(conn);
    struct worker_state *w = &app->workers[sockeye_conn_worker(conn)];
    if (w->len == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        uint64_t *ids = realloc(w->ids, cap * sizeof *ids);
        if (ids) w->ids = ids;
        struct member **ms = realloc(w->members, cap * sizeof *ms);
        if (ms) w->members = ms;
        if (!ids || !ms) {
            sockeye_conn_close(conn, 1011, "out of memory");
            return;
        }
        w->cap = cap;
    }
    w->ids[w->len] = sockeye_conn_id(conn);
    w->members[w->len] = m;
    w->len++;
    announce(conn, m, "joined");
}

static void on_message(void *user_data, sockeye_conn *conn, sockeye_opcode opcode,
                       const uint8_t *data, size_t len) {
    (void)user_data;
    if (opcode != SOCKEYE_OPCODE_TEXT) {
        sockeye_conn_close(conn, 1003, "rooms take text");
        return;
    }
    const struct member *m = sockeye_conn_user_data(conn);
    size_t cap = NAME_MAX_LEN + 2 + len;
    char *text = malloc(cap + 1);
    if (!text) return;
    int n = snprintf(text, cap + 1, "%s: ", m->nick);
    memcpy(text + n, data, len); /* `data` is lent for this call only: copied here */
    broadcast(conn, m->room, text, (size_t)n + len);
    free(text);
}

static void on_close(void *user_data, sockeye_conn *conn, uint16_t code, const char *reason,
                     size_t reason_len) {
    (void)code;
    (void)reason;
    (void)reason_len;
    struct app *app = user_data;
    struct member *m = sockeye_conn_user_data(conn);
    struct worker_state *w = &app->workers[sockeye_conn_worker(conn)];
    uint64_t id = sockeye_conn_id(conn);
    for (size_t i = 0; i < w->len; i++) {
        if (w->ids[i] == id) {
            w->len--;
            w->ids[i] = w->ids[w->len];
            w->members[i] = w->members[w->len];
            break;
        }
    }
    /* on_close follows only an on_open: every member gets its leave. */
    announce(conn, m, "left");
    free(m);
    sockeye_conn_set_user_data(conn, NULL);
}

/* Signals: blocked in every thread, taken by this one with sigwait, which may then call the
 * (not async-signal-safe) sockeye_server_stop. */
struct signal_waiter {
    sigset_t set;
    sockeye_server *server;
    atomic_bool done;
};

static void *wait_for_signal(void *arg) {
    struct signal_waiter *w = arg;
    int sig = 0;
    if (sigwait(&w->set, &sig) == 0) sockeye_server_stop(w->server);
    atomic_store(&w->done, true);
    return NULL;
}

static long arg_or_env(int argc, char **argv, int i, const char *env, long dflt) {
    const char *s = i < argc ? argv[i] : getenv(env);
    return (s && *s) ? strtol(s, NULL, 10) : dflt;
}

int main(int argc, char **argv) {
    long port = arg_or_env(argc, argv, 1, "SOCKEYE_PORT", 9003);
    long workers = arg_or_env(argc, argv, 2, "SOCKEYE_WORKERS", 0);
    if (port < 0 || port > 65535 || workers < 0) {
        fprintf(stderr, "usage: %s [PORT [WORKERS]]\n", argv[0]);
        return 2;
    }

    struct signal_waiter waiter = {0};
    sigemptyset(&waiter.set);
    sigaddset(&waiter.set, SIGINT);
    sigaddset(&waiter.set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &waiter.set, NULL); /* before any thread: workers inherit it */

    sockeye_config cfg;
    sockeye_config_default(&cfg);
    cfg.address = "127.0.0.1";
    cfg.port = (uint16_t)port;
    cfg.workers = (uint32_t)workers;

    sockeye_callbacks cb = {0};
    cb.on_upgrade = on_upgrade;
    cb.on_http = on_http;
    cb.on_open = on_open;
    cb.on_message = on_message;
    cb.on_close = on_close;

    /* The per-worker lists are sized once the server says how many workers it has; no
     * callback runs before sockeye_server_run. */
    struct app app = {0};
    sockeye_server *server = NULL;
    sockeye_result rc = sockeye_server_new(&cfg, &cb, &app, &server);
    if (rc != SOCKEYE_OK) {
        fprintf(stderr, "rooms: cannot start: %s\n", sockeye_strerror(rc));
        return 1;
    }
    app.worker_count = sockeye_server_worker_count(server);
    app.workers = calloc(app.worker_count, sizeof *app.workers);
    if (!app.workers) {
        sockeye_server_free(server);
        return 1;
    }
    printf("listening on ws://127.0.0.1:%u/rooms/NAME?nick=NICK (%zu workers)\n",
           (unsigned)sockeye_server_local_port(server), app.worker_count);
    fflush(stdout);

    waiter.server = server;
    pthread_t sig_thread;
    if (pthread_create(&sig_thread, NULL, wait_for_signal, &waiter) != 0) {
        fprintf(stderr, "rooms: cannot start the signal thread\n");
        sockeye_server_free(server);
        free(app.workers);
        return 1;
    }

    rc = sockeye_server_run(server); /* blocks until stopped */

    if (!atomic_load(&waiter.done)) pthread_kill(sig_thread, SIGTERM);
    pthread_join(sig_thread, NULL);
    /* Posts still queued are called (worker NULL) and freed by the time this returns. */
    sockeye_server_free(server);
    for (size_t i = 0; i < app.worker_count; i++) {
        free(app.workers[i].ids);
        free(app.workers[i].members);
    }
    free(app.workers);
    if (rc != SOCKEYE_OK) {
        fprintf(stderr, "rooms: %s\n", sockeye_strerror(rc));
        return 1;
    }
    printf("stopped\n");
    return 0;
}
