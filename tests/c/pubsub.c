/*
 * pubsub.c: pub/sub through the C API, checked from C (tests/c/run.sh builds it with
 * ASan/UBSan and runs it on each backend, and runs a plain build under valgrind; exit status
 * 0 when every check passed). A server with two workers runs on a thread of its own; three
 * clients (a minimal WebSocket client below, over blocking sockets), spread over both
 * workers, join the topic "room", which every connection subscribes to in on_open, and:
 *
 * - a publish from another pthread (sockeye_server_publish) reaches all three, whichever
 *   worker holds them;
 * - a line a client sends is published to everyone (sockeye_conn_publish_including_self), or
 *   to everyone but the sender (sockeye_conn_publish, "others:LINE");
 * - an unsubscribed client ("leave") gets no more publishes, and the counts follow
 *   (sockeye_server_subscriber_count, the new sockeye_stats fields);
 * - a topic over max_topic_len (set to 16 here) is SOCKEYE_ERR_TOPIC_TOO_LONG, from a
 *   callback and from another thread; a bad opcode, bad UTF-8 and NULL pointers are refused;
 * - on_close can no longer subscribe (SOCKEYE_ERR_CLOSED), the subscriptions end with the
 *   connections, and a publish after the stop is SOCKEYE_ERR_STOPPED.
 *
 * The backend is SOCKEYE_BACKEND_AUTO, so the SOCKEYE_BACKEND environment variable picks it.
 * Prints one line per check (`ok NAME` / `FAIL NAME: why`).
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <sockeye.h>

#define ROOM "room"
#define ROOM_LEN 4
#define MAX_TOPIC 16
#define CLIENTS 3
#define MAX_OPENS 24 /* CLIENTS, plus reconnections until they are not all on one worker */

#include "check.h"

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------------ the server side -- */

/* What the callbacks saw; the server-wide user_data, used from both workers at once. */
struct app {
    atomic_int opened;    /* on_open calls */
    atomic_int open_ok;   /* ... whose subscribe results were all as expected */
    atomic_int closed;    /* on_close calls */
    atomic_int closed_ok; /* ... where subscribing was refused with SOCKEYE_ERR_CLOSED */
    atomic_int bad;       /* argument checks inside on_message that failed */
    atomic_int worker_of[MAX_OPENS]; /* the worker of the n-th connection opened (-1: not yet) */
};

static const char LONG_TOPIC[] = "seventeen bytes!!"; /* MAX_TOPIC + 1 bytes */
#define LONG_LEN (sizeof LONG_TOPIC - 1)
_Static_assert(sizeof LONG_TOPIC - 1 == MAX_TOPIC + 1, "LONG_TOPIC is one byte too long");

static void on_open(void *user_data, sockeye_conn *conn) {
    struct app *app = user_data;
    int ok = sockeye_conn_subscribe(conn, ROOM, ROOM_LEN) == SOCKEYE_OK &&
             sockeye_conn_subscribe(conn, ROOM, ROOM_LEN) == SOCKEYE_OK && /* again: fine */
             sockeye_conn_is_subscribed(conn, ROOM, ROOM_LEN) &&
             !sockeye_conn_is_subscribed(conn, "other", 5) &&
             sockeye_conn_subscribe(conn, LONG_TOPIC, LONG_LEN) ==
                 SOCKEYE_ERR_TOPIC_TOO_LONG &&
             sockeye_conn_subscribe(conn, NULL, 3) == SOCKEYE_ERR_NULL &&
             sockeye_conn_subscriber_count(conn, ROOM, ROOM_LEN) >= 1;
    if (ok) atomic_fetch_add(&app->open_ok, 1);
    int n = atomic_fetch_add(&app->opened, 1);
    /* A connection id holds its worker in its top 12 bits. */
    if (n < MAX_OPENS) atomic_store(&app->worker_of[n], (int)(sockeye_conn_id(conn) >> 52));
}

static void reply(sockeye_conn *conn, const char *text) {
    sockeye_conn_send_text(conn, text, strlen(text));
}

/* "leave": unsubscribe, answer "left"; "ping": answer "pong"; "others:LINE": publish LINE to
 * the others; anything else: publish it to everyone, the sender included. */
static void on_message(void *user_data, sockeye_conn *conn, sockeye_opcode opcode,
                       const uint8_t *data, size_t len) {
    struct app *app = user_data;
    static const uint8_t not_utf8[] = {0xff};
    int ok = sockeye_conn_publish(conn, ROOM, ROOM_LEN, 7, data, len) ==
                 SOCKEYE_ERR_INVALID_ARGUMENT &&
             sockeye_conn_publish(conn, LONG_TOPIC, LONG_LEN, opcode, data, len) ==
                 SOCKEYE_ERR_TOPIC_TOO_LONG &&
             sockeye_conn_publish_including_self(conn, ROOM, ROOM_LEN, SOCKEYE_OPCODE_TEXT,
                                                 not_utf8, 1) == SOCKEYE_ERR_UTF8 &&
             sockeye_conn_publish(conn, ROOM, ROOM_LEN, opcode, NULL, 1) == SOCKEYE_ERR_NULL;
    if (!ok) atomic_fetch_add(&app->bad, 1);

    if (len == 5 && memcmp(data, "leave", 5) == 0) {
        int was = sockeye_conn_unsubscribe(conn, ROOM, ROOM_LEN);
        int again = sockeye_conn_unsubscribe(conn, ROOM, ROOM_LEN);
        int still = sockeye_conn_is_subscribed(conn, ROOM, ROOM_LEN);
        reply(conn, was && !again && !still ? "left" : "leave went wrong");
    } else if (len == 4 && memcmp(data, "ping", 4) == 0) {
        reply(conn, "pong");
    } else if (len >= 7 && memcmp(data, "others:", 7) == 0) {
        if (sockeye_conn_publish(conn, ROOM, ROOM_LEN, opcode, data + 7, len - 7) != SOCKEYE_OK)
            atomic_fetch_add(&app->bad, 1);
    } else if (sockeye_conn_publish_including_self(conn, ROOM, ROOM_LEN, opcode, data, len) !=
               SOCKEYE_OK) {
        atomic_fetch_add(&app->bad, 1);
    }
}

static void on_close(void *user_data, sockeye_conn *conn, uint16_t code, const char *reason,
                     size_t reason_len) {
    struct app *app = user_data;
    (void)code;
    (void)reason;
    (void)reason_len;
    if (sockeye_conn_subscribe(conn, ROOM, ROOM_LEN) == SOCKEYE_ERR_CLOSED)
        atomic_fetch_add(&app->closed_ok, 1);
    atomic_fetch_add(&app->closed, 1);
}

struct runner {
    sockeye_server *server;
    sockeye_result rc;
};

static void *run_server(void *arg) {
    struct runner *r = arg;
    r->rc = sockeye_server_run(r->server);
    return NULL;
}

/* A thread that publishes, as a feed thread of a real program would. */
struct publisher {
    sockeye_server *server;
    const char *topic;
    size_t topic_len;
    const char *text;
    sockeye_result rc;
};

static void *publish_thread(void *arg) {
    struct publisher *p = arg;
    p->rc = sockeye_server_publish(p->server, p->topic, p->topic_len, SOCKEYE_OPCODE_TEXT,
                                   (const uint8_t *)p->text, strlen(p->text));
    return NULL;
}

/* Publishes `text` to `topic` from a new pthread; returns what sockeye_server_publish did. */
static sockeye_result publish_from_thread(sockeye_server *server, const char *topic,
                                          size_t topic_len, const char *text) {
    struct publisher p = {server, topic, topic_len, text, SOCKEYE_ERR_PANIC};
    pthread_t t;
    if (pthread_create(&t, NULL, publish_thread, &p) != 0) return SOCKEYE_ERR_IO;
    pthread_join(t, NULL);
    return p.rc;
}

/* ---------------------------------------------------------------------------- the clients -- */

struct client {
    int fd;
    unsigned char buf[8192];
    size_t have;
};

/* Connects to 127.0.0.1:port and upgrades /room; 0 on success. */
static int client_open(struct client *c, uint16_t port) {
    c->have = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) return -1;
    struct timeval tv = {10, 0}; /* nothing here waits longer */
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) return -1;
    static const char req[] = "GET /room HTTP/1.1\r\n"
                              "Host: 127.0.0.1\r\n"
                              "Upgrade: websocket\r\n"
                              "Connection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n";
    if (send(c->fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1)) return -1;
    for (;;) {
        unsigned char *end = NULL;
        for (size_t i = 0; i + 4 <= c->have; i++) {
            if (memcmp(c->buf + i, "\r\n\r\n", 4) == 0) {
                end = c->buf + i + 4;
                break;
            }
        }
        if (end) {
            int ok = c->have >= 12 && memcmp(c->buf, "HTTP/1.1 101", 12) == 0;
            size_t head = (size_t)(end - c->buf);
            memmove(c->buf, end, c->have - head); /* frames that came with the head */
            c->have -= head;
            return ok ? 0 : -1;
        }
        if (c->have == sizeof c->buf) return -1;
        ssize_t n = recv(c->fd, c->buf + c->have, sizeof c->buf - c->have, 0);
        if (n <= 0) return -1;
        c->have += (size_t)n;
    }
}

/* Sends one masked frame (payloads under 126 bytes: all this test needs). */
static int client_send(struct client *c, unsigned opcode, const void *payload, size_t len) {
    unsigned char f[2 + 4 + 125];
    static const unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    if (len > 125) return -1;
    f[0] = (unsigned char)(0x80 | opcode);
    f[1] = (unsigned char)(0x80 | len);
    memcpy(f + 2, mask, 4);
    for (size_t i = 0; i < len; i++) f[6 + i] = ((const unsigned char *)payload)[i] ^ mask[i % 4];
    return send(c->fd, f, 6 + len, MSG_NOSIGNAL) == (ssize_t)(6 + len) ? 0 : -1;
}

static int client_send_text(struct client *c, const char *text) {
    return client_send(c, 0x1, text, strlen(text));
}

/* Reads one frame (the server's are unmasked) into `out` (NUL-terminated, cut to `cap`);
 * returns its opcode, or -1 on a timeout, EOF or a frame too large for the buffer. */
static int client_recv(struct client *c, char *out, size_t cap) {
    for (;;) {
        if (c->have >= 2) {
            size_t len = c->buf[1] & 0x7f, off = 2;
            int ready = 1;
            if (len == 127) return -1; /* nothing in this test is that large */
            if (len == 126) {
                if (c->have >= 4) {
                    len = ((size_t)c->buf[2] << 8) | c->buf[3];
                    off = 4;
                } else {
                    ready = 0;
                }
            }
            if (off + len > sizeof c->buf) return -1;
            if (ready && c->have >= off + len) {
                int opcode = c->buf[0] & 0x0f;
                size_t n = len < cap - 1 ? len : cap - 1;
                memcpy(out, c->buf + off, n);
                out[n] = '\0';
                memmove(c->buf, c->buf + off + len, c->have - off - len);
                c->have -= off + len;
                return opcode;
            }
        }
        ssize_t n = recv(c->fd, c->buf + c->have, sizeof c->buf - c->have, 0);
        if (n <= 0) return -1;
        c->have += (size_t)n;
    }
}

/* Checks that the next message `c` gets is the text `want`. */
static void expect_text(const char *name, struct client *c, const char *want) {
    char got[256];
    int op = client_recv(c, got, sizeof got);
    char why[400];
    snprintf(why, sizeof why, "expected text \"%s\", got opcode %d \"%s\"", want, op,
             op < 0 ? "" : got);
    check(name, op == 0x1 && strcmp(got, want) == 0, why);
}

/* Sends close 1000, waits for the server's close frame (skipping what was still on its
 * way), closes the socket. */
static void client_close(struct client *c) {
    static const unsigned char code[2] = {0x03, 0xe8};
    char got[256];
    client_send(c, 0x8, code, 2);
    int op;
    do {
        op = client_recv(c, got, sizeof got);
    } while (op >= 0 && op != 0x8);
    close(c->fd);
    c->fd = -1;
}

/* Waits up to 10 s for `cond(server)`. */
static int wait_until(int (*cond)(sockeye_server *), sockeye_server *server) {
    for (int i = 0; i < 1000; i++) {
        if (cond(server)) return 1;
        sleep_ms(10);
    }
    return 0;
}

static size_t stat_sum(sockeye_server *s, size_t offset) {
    size_t sum = 0;
    for (size_t w = 0; w < sockeye_server_worker_count(s); w++) {
        sockeye_stats st;
        if (sockeye_server_stats(s, w, &st) == SOCKEYE_OK) sum += *(size_t *)((char *)&st + offset);
    }
    return sum;
}

#define STAT(s, field) stat_sum((s), offsetof(sockeye_stats, field))

static int three_subscribers(sockeye_server *s) {
    return sockeye_server_subscriber_count(s, ROOM, ROOM_LEN) == 3;
}

static int no_subscriber(sockeye_server *s) {
    return sockeye_server_subscriber_count(s, ROOM, ROOM_LEN) == 0;
}

/* Publishes: from a thread 3 + 3 (marker) + 2 (after leave); "hello" 3, "x" 2. Received:
 * hello, others:x, leave, ping. Queued: the 13 deliveries and the replies left and pong. */
static int counters_settled(sockeye_server *s) {
    return STAT(s, deliveries) == 13 && STAT(s, messages_in) == 4 &&
           STAT(s, messages_out) == 13 + 2 && STAT(s, subscriptions) == 2;
}

/* ---------------------------------------------------------------------------------- main -- */

static struct app app; /* every counter starts at 0 */

int main(void) {
    for (int i = 0; i < MAX_OPENS; i++) atomic_init(&app.worker_of[i], -1);
    sockeye_config cfg;
    sockeye_config_default(&cfg);
    check("max_topic_len defaults to 256", cfg.max_topic_len == 256, "another value");
    check("the new codes have their own texts",
          strstr(sockeye_strerror(SOCKEYE_ERR_TOPIC_TOO_LONG), "max_topic_len") != NULL &&
              strstr(sockeye_strerror(SOCKEYE_ERR_CLOSED), "closed") != NULL &&
              strstr(sockeye_strerror(SOCKEYE_ERR_MESSAGE_TOO_LARGE), "larger") != NULL,
          sockeye_strerror(SOCKEYE_ERR_TOPIC_TOO_LONG));
    check_rc("publish to a NULL server",
             sockeye_server_publish(NULL, ROOM, ROOM_LEN, SOCKEYE_OPCODE_TEXT, NULL, 0),
             SOCKEYE_ERR_NULL);
    check("subscriber count of a NULL server", sockeye_server_subscriber_count(NULL, ROOM, 4) == 0,
          "not 0");
    check_rc("subscribe a NULL conn", sockeye_conn_subscribe(NULL, ROOM, ROOM_LEN),
             SOCKEYE_ERR_NULL);

    cfg.address = "127.0.0.1";
    cfg.port = 0;
    cfg.workers = 2;
    cfg.max_topic_len = MAX_TOPIC;
    sockeye_callbacks cb = {0};
    cb.on_open = on_open;
    cb.on_message = on_message;
    cb.on_close = on_close;
    sockeye_server *server = NULL;
    sockeye_result rc = sockeye_server_new(&cfg, &cb, &app, &server);
    if (rc == SOCKEYE_ERR_BACKEND_UNAVAILABLE) {
        printf("skipped: the backend is not available on this kernel\n");
        return 77;
    }
    check_rc("server", rc, SOCKEYE_OK);
    if (rc != SOCKEYE_OK) return 1;
    uint16_t port = sockeye_server_local_port(server);

    struct runner runner = {server, SOCKEYE_ERR_PANIC};
    pthread_t run_thread;
    if (pthread_create(&run_thread, NULL, run_server, &runner) != 0) {
        check("server thread", 0, "pthread_create failed");
        sockeye_server_free(server);
        return 1;
    }

    /* Three clients, not all on one worker (the kernel spreads connections over the workers'
     * listeners by a hash: when the third lands where the first two are, it reconnects), so
     * that every publish below crosses between workers. */
    struct client c[CLIENTS];
    int worker[CLIENTS];
    int opens = 0, connected = 1;
    for (int i = 0; i < CLIENTS && connected; i++) {
        for (;;) {
            connected = client_open(&c[i], port) == 0;
            if (!connected) break;
            int w = -1;
            for (int t = 0; t < 1000 && (w = atomic_load(&app.worker_of[opens])) < 0; t++)
                sleep_ms(10);
            opens++;
            worker[i] = w;
            int one_worker = i == CLIENTS - 1 && worker[0] == worker[1] && w == worker[0];
            if (!one_worker || opens == MAX_OPENS) break;
            client_close(&c[i]); /* its subscription ends with it */
            for (int t = 0; t < 1000; t++) {
                if (sockeye_server_subscriber_count(server, ROOM, ROOM_LEN) == (size_t)i) break;
                sleep_ms(10);
            }
        }
    }
    check("3 clients connect", connected, "a handshake failed");
    if (!connected) {
        sockeye_server_stop(server);
        pthread_join(run_thread, NULL);
        sockeye_server_free(server);
        return 1;
    }
    check("every on_open subscribed", wait_until(three_subscribers, server),
          "sockeye_server_subscriber_count never reached 3");
    check("on_open: subscribe, again, is_subscribed, too long, NULL",
          atomic_load(&app.open_ok) == opens, "a subscribe result was wrong");
    check("the clients are on both workers",
          !(worker[0] == worker[1] && worker[1] == worker[2]) && worker[0] >= 0 && worker[1] >= 0 &&
              worker[2] >= 0,
          "all on one worker");
    printf("note: %d connections opened for %d clients (workers %d %d %d)\n", opens, CLIENTS,
           worker[0], worker[1], worker[2]);

    /* From another thread: all three, on both workers. */
    check_rc("publish from a pthread",
             publish_from_thread(server, ROOM, ROOM_LEN, "from a thread"), SOCKEYE_OK);
    for (int i = 0; i < CLIENTS; i++)
        expect_text("a pthread's publish arrives", &c[i], "from a thread");

    /* What another thread may not publish. */
    check_rc("too long a topic from a pthread",
             publish_from_thread(server, LONG_TOPIC, LONG_LEN, "x"),
             SOCKEYE_ERR_TOPIC_TOO_LONG);
    check_rc("a topic of max_topic_len is fine",
             publish_from_thread(server, LONG_TOPIC, MAX_TOPIC, "nobody listens"), SOCKEYE_OK);
    check_rc("NULL topic with a length", publish_from_thread(server, NULL, 4, "x"),
             SOCKEYE_ERR_NULL);
    check_rc("bad opcode",
             sockeye_server_publish(server, ROOM, ROOM_LEN, 3, (const uint8_t *)"x", 1),
             SOCKEYE_ERR_INVALID_ARGUMENT);
    check_rc("text that is not UTF-8",
             sockeye_server_publish(server, ROOM, ROOM_LEN, SOCKEYE_OPCODE_TEXT,
                                    (const uint8_t *)"\xff", 1),
             SOCKEYE_ERR_UTF8);
    check_rc("a length no buffer has",
             sockeye_server_publish(server, ROOM, ROOM_LEN, SOCKEYE_OPCODE_BINARY,
                                    (const uint8_t *)"x", SIZE_MAX),
             SOCKEYE_ERR_MESSAGE_TOO_LARGE);

    /* Everyone, the sender included. */
    client_send_text(&c[0], "hello");
    for (int i = 0; i < CLIENTS; i++) expect_text("publish including self", &c[i], "hello");

    /* Everyone but the sender: client 1's next message is the marker, not "x". */
    client_send_text(&c[1], "others:x");
    expect_text("publish to the others (0)", &c[0], "x");
    expect_text("publish to the others (2)", &c[2], "x");
    check_rc("marker", publish_from_thread(server, ROOM, ROOM_LEN, "marker"), SOCKEYE_OK);
    for (int i = 0; i < CLIENTS; i++) expect_text("the sender was left out", &c[i], "marker");

    /* Unsubscribed: the count drops and publishes pass client 2 by. */
    client_send_text(&c[2], "leave");
    expect_text("unsubscribe", &c[2], "left");
    check("2 subscribers after leave", sockeye_server_subscriber_count(server, ROOM, ROOM_LEN) == 2,
          "another count");
    check_rc("after leave", publish_from_thread(server, ROOM, ROOM_LEN, "after leave"), SOCKEYE_OK);
    expect_text("still subscribed (0)", &c[0], "after leave");
    expect_text("still subscribed (1)", &c[1], "after leave");
    client_send_text(&c[2], "ping");
    expect_text("the unsubscribed one gets nothing", &c[2], "pong");

    check("stats: deliveries, messages in and out, subscriptions",
          wait_until(counters_settled, server), "counters other than 13, 4, 15, 2");
    check("stats: no publish drops", STAT(server, publish_drops) == 0, "drops");
    check("stats: no backpressure closes", STAT(server, backpressure_closes) == 0, "closes");
    check("argument checks inside on_message", atomic_load(&app.bad) == 0, "one failed");

    /* Subscriptions end with the connections. */
    for (int i = 0; i < CLIENTS; i++) client_close(&c[i]);
    check("subscriptions end with the connections", wait_until(no_subscriber, server),
          "subscribers left");
    for (int i = 0; i < 1000 && atomic_load(&app.closed) < opens; i++) sleep_ms(10);
    check("on_close cannot subscribe (SOCKEYE_ERR_CLOSED)",
          atomic_load(&app.closed) == opens && atomic_load(&app.closed_ok) == opens,
          "another result");

    check_rc("stop", sockeye_server_stop(server), SOCKEYE_OK);
    pthread_join(run_thread, NULL);
    check_rc("run returns", runner.rc, SOCKEYE_OK);
    check_rc("publish after the stop", publish_from_thread(server, ROOM, ROOM_LEN, "late"),
             SOCKEYE_ERR_STOPPED);
    sockeye_server_free(server);

    printf("pubsub: %s\n", failures ? "FAILED" : "all passed");
    return failures ? 1 : 0;
}
