/*
 * echo.c: a Sockeye echo server in C. Serves ws://127.0.0.1:PORT/echo (every message comes
 * back, text as text, binary as binary; other paths get 404) and stops gracefully on SIGINT
 * or SIGTERM.
 *
 *   cc -std=c11 -O2 -pthread -o echo echo.c $(pkg-config --cflags --libs sockeye)
 *   ./echo [PORT [WORKERS]]        (or SOCKEYE_PORT / SOCKEYE_WORKERS; port 0 picks one)
 *
 * It prints "listening on ws://127.0.0.1:PORT/echo" once the port is bound.
 */
#define _POSIX_C_SOURCE 200809L /* sigwait, pthread_sigmask, pthread_kill */

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sockeye.h>

/* Per-connection state, owned by this program: allocated in on_open, freed in on_close. */
struct conn_stats {
    unsigned long messages;
};

static uint16_t on_upgrade(void *user_data, const sockeye_request *req, sockeye_upgrade *up) {
    (void)user_data;
    (void)up;
    const char *path = sockeye_request_path(req, NULL); /* valid until we return */
    return (path && strcmp(path, "/echo") == 0) ? SOCKEYE_UPGRADE_ACCEPT : 404;
}

static void on_open(void *user_data, sockeye_conn *conn) {
    (void)user_data;
    sockeye_conn_set_user_data(conn, calloc(1, sizeof(struct conn_stats)));
}

static void on_message(void *user_data, sockeye_conn *conn, sockeye_opcode opcode,
                       const uint8_t *data, size_t len) {
    (void)user_data;
    struct conn_stats *st = sockeye_conn_user_data(conn);
    if (st) st->messages++;
    /* `data` is lent for this call only; the send copies it. */
    sockeye_conn_send(conn, opcode, data, len);
}

static void on_close(void *user_data, sockeye_conn *conn, uint16_t code, const char *reason,
                     size_t reason_len) {
    (void)user_data;
    (void)code;
    (void)reason;
    (void)reason_len;
    free(sockeye_conn_user_data(conn));
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
    long port = arg_or_env(argc, argv, 1, "SOCKEYE_PORT", 9002);
    long workers = arg_or_env(argc, argv, 2, "SOCKEYE_WORKERS", 0);
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
    cb.on_close = on_close;

    sockeye_server *server = NULL;
    sockeye_result rc = sockeye_server_new(&cfg, &cb, NULL, &server);
    if (rc != SOCKEYE_OK) {
        fprintf(stderr, "echo: cannot start: %s\n", sockeye_strerror(rc));
        return 1;
    }
    printf("listening on ws://127.0.0.1:%u/echo (%zu workers, sockeye %s)\n",
           (unsigned)sockeye_server_local_port(server), sockeye_server_worker_count(server),
           sockeye_version());
    fflush(stdout);

    waiter.server = server;
    pthread_t sig_thread;
    if (pthread_create(&sig_thread, NULL, wait_for_signal, &waiter) != 0) {
        fprintf(stderr, "echo: cannot start the signal thread\n");
        sockeye_server_free(server);
        return 1;
    }

    rc = sockeye_server_run(server); /* blocks until stopped */

    /* Wake the signal thread if the server stopped some other way, then join it. */
    if (!atomic_load(&waiter.done)) pthread_kill(sig_thread, SIGTERM);
    pthread_join(sig_thread, NULL);
    sockeye_server_free(server);
    if (rc != SOCKEYE_OK) {
        fprintf(stderr, "echo: %s\n", sockeye_strerror(rc));
        return 1;
    }
    printf("stopped\n");
    return 0;
}
