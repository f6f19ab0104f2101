/*
 * chat.c: a Sockeye chat server in C, on pub/sub. Every text line a client sends on
 * ws://127.0.0.1:PORT/chat goes to every /chat connection on every worker, the sender
 * included; binary messages are refused with close 1003; other paths get 404. Stops
 * gracefully on SIGINT or SIGTERM.
 *
 *   cc -std=c11 -O2 -pthread -o chat chat.c $(pkg-config --cflags --libs sockeye)
 *   ./chat [PORT [WORKERS]]        (or SOCKEYE_PORT / SOCKEYE_WORKERS; default 2 workers)
 *
 * The room is a topic: a connection subscribes to it in on_open and each line is published
 * to it with sockeye_conn_publish_including_self. The library does the fan-out (the frame is
 * built once per worker and reaches subscribers on every worker) and ends a subscription with
 * its connection, so this program keeps no member list and takes no lock. Another thread
 * could publish to the room too, with sockeye_server_publish.
 *
 * It prints "listening on ws://127.0.0.1:PORT/chat" once the port is bound.
 */
#define _POSIX_C_SOURCE 200809L /* sigwait, pthread_sigmask, pthread_kill */

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sockeye.h>

static const char ROOM[] = "chat";
#define ROOM_LEN (sizeof ROOM - 1)

static uint16_t on_upgrade(void *user_data, const sockeye_request *req, sockeye_upgrade *up) {
    (void)user_data;
    (void)up;
    const char *path = sockeye_request_path(req, NULL); /* valid until we return */
    return (path && strcmp(path, "/chat") == 0) ? SOCKEYE_UPGRADE_ACCEPT : 404;
}

static void on_open(void *user_data, sockeye_conn *conn) {
    (void)user_data;
    sockeye_result rc = sockeye_conn_subscribe(conn, ROOM, ROOM_LEN);
    if (rc != SOCKEYE_OK) {
        fprintf(stderr, "chat: subscribe: %s\n", sockeye_strerror(rc));
        sockeye_conn_close(conn, 1011, "cannot join the room");
    }
}

static void on_message(void *user_data, sockeye_conn *conn, sockeye_opcode opcode,
                       const uint8_t *data, size_t len) {
    (void)user_data;
    if (opcode != SOCKEYE_OPCODE_TEXT) {
        sockeye_conn_close(conn, 1003, "chat takes text");
        return;
    }
    /* `data` is lent for this call only; the publish copies it. */
    sockeye_result rc =
        sockeye_conn_publish_including_self(conn, ROOM, ROOM_LEN, SOCKEYE_OPCODE_TEXT, data, len);
    if (rc != SOCKEYE_OK) fprintf(stderr, "chat: publish: %s\n", sockeye_strerror(rc));
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
    long workers = arg_or_env(argc, argv, 2, "SOCKEYE_WORKERS", 2);
    if (port < 0 || port > 65535 || workers < 0) {
        fprintf(stderr, "usage: %s [PORT [WORKERS]]\n", argv[0]);
        return 2;
    }

    struct signal_waiter waiter = {0};
    sigemptyset(&waiter.set);
    sigaddset(&waiter.set, SIGINT);
    sigaddset(&waiter.set, SIGTERM);
    /* Before any thread exists, so the workers inherit the mask. */
    pthread_sigmask(SIG_BLOCK, &waiter.set, NULL);

    sockeye_config cfg;
    sockeye_config_default(&cfg);
    cfg.address = "127.0.0.1";
    cfg.port = (uint16_t)port;
    cfg.workers = (uint32_t)workers;

    sockeye_callbacks cb = {0};
    cb.on_upgrade = on_upgrade;
    cb.on_open = on_open;
    cb.on_message = on_message;
    /* No on_close: a connection's subscriptions end with it. */

    sockeye_server *server = NULL;
    sockeye_result rc = sockeye_server_new(&cfg, &cb, NULL, &server);
    if (rc != SOCKEYE_OK) {
        fprintf(stderr, "chat: cannot start: %s\n", sockeye_strerror(rc));
        return 1;
    }
    printf("listening on ws://127.0.0.1:%u/chat (%zu workers)\n",
           (unsigned)sockeye_server_local_port(server), sockeye_server_worker_count(server));
    fflush(stdout);

    waiter.server = server;
    pthread_t sig_thread;
    if (pthread_create(&sig_thread, NULL, wait_for_signal, &waiter) != 0) {
        fprintf(stderr, "chat: cannot start the signal thread\n");
        sockeye_server_free(server);
        return 1;
    }

    rc = sockeye_server_run(server); /* blocks until stopped */

    if (!atomic_load(&waiter.done)) pthread_kill(sig_thread, SIGTERM);
    pthread_join(sig_thread, NULL);
    sockeye_server_free(server);
    if (rc != SOCKEYE_OK) {
        fprintf(stderr, "chat: %s\n", sockeye_strerror(rc));
        return 1;
    }
    printf("stopped\n");
    return 0;
}
