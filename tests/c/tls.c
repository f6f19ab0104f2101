/*
 * tls.c: wss:// through the C API, checked from C (tests/c/run.sh builds it with ASan/UBSan
 * and runs it on each backend; exit status 0 when every check passed, 77 when the backend is
 * not available):
 *
 *     tls CERTDIR CLIENT...
 *
 * CERTDIR holds what tests/tls/make-certs.sh makes (ca.pem, cert.pem + key.pem for localhost
 * and 127.0.0.1 with CN "localhost", cert2.pem + key2.pem with CN "sockeye-test-2"). CLIENT is
 * a command run as `CLIENT... wss://127.0.0.1:PORT/echo CA.pem CN` that exits 0 when the server
 * it reaches serves a certificate with that CN chaining to CA.pem and echoes over TLS
 * (run.sh passes `python drive.py wss`).
 *
 * - sockeye_server_new with a missing key file, a key that is not the certificate's, or a
 *   "key" file with no key in it is SOCKEYE_ERR_TLS, no server, and sockeye_last_error() names
 *   the problem; only one of the two fields set is SOCKEYE_ERR_INVALID_ARGUMENT;
 * - a server with tls_cert_file/tls_key_file (2 workers) serves wss://: the client verifies
 *   the certificate and echoes; sockeye_stats counts the handshakes;
 * - sockeye_server_reload_tls with the second pair: SOCKEYE_OK, and a new client sees the
 *   second certificate; with a file that does not exist or holds no key: SOCKEYE_ERR_TLS,
 *   sockeye_last_error() names it, and the second certificate stays in force; NULL arguments
 *   are SOCKEYE_ERR_NULL;
 * - a plain ws:// server refuses a TLS reload with SOCKEYE_ERR_TLS.
 *
 * The backend is SOCKEYE_BACKEND_AUTO, so the SOCKEYE_BACKEND environment variable picks it.
 * Prints one line per check (`ok NAME` / `FAIL NAME: why`).
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <sockeye.h>

extern char **environ;

#include "check.h"

/* sockeye_last_error() holds `needle`. */
static void check_last_error(const char *name, const char *needle) {
    const char *e = sockeye_last_error();
    char why[512];
    snprintf(why, sizeof why, "sockeye_last_error() is \"%s\", no \"%s\" in it", e ? e : "(NULL)",
             needle);
    check(name, e != NULL && strstr(e, needle) != NULL, why);
}

static char dir[1024];
static char path_buf[8][1200];
static int path_next = 0;

/* CERTDIR/name, in one of a few static buffers. */
static const char *in_dir(const char *name) {
    char *p = path_buf[path_next++ % 8];
    snprintf(p, sizeof path_buf[0], "%s/%s", dir, name);
    return p;
}

static sockeye_config config(const char *cert, const char *key) {
    sockeye_config cfg;
    sockeye_config_default(&cfg);
    cfg.address = "127.0.0.1";
    cfg.port = 0;
    cfg.workers = 2;
    cfg.tls_cert_file = cert;
    cfg.tls_key_file = key;
    return cfg;
}

/* sockeye_server_new refuses `cfg` with `want`; `needle` (if any) is in the last error. */
static void refused(const char *name, const sockeye_config *cfg, sockeye_result want,
                    const char *needle) {
    sockeye_server *s = NULL;
    sockeye_result rc = sockeye_server_new(cfg, NULL, NULL, &s);
    check_rc(name, rc, want);
    check("... and makes no server", s == NULL, "a server was made");
    if (s) sockeye_server_free(s);
    if (needle) check_last_error("... and sockeye_last_error() says why", needle);
}

/* ------------------------------------------------------------------------------ the server -- */

static void on_message(void *user_data, sockeye_conn *conn, sockeye_opcode opcode,
                       const uint8_t *data, size_t len) {
    (void)user_data;
    sockeye_conn_send(conn, opcode, data, len);
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

/* ------------------------------------------------------------------------------ the client -- */

static char **client_argv;
static int client_argc;

/* Runs the client command against the server on `port`, expecting certificate `cn`; 0 when it
 * passed. Its output is passed through, indented by the command itself. */
static int client(uint16_t port, const char *cn) {
    char url[64];
    snprintf(url, sizeof url, "wss://127.0.0.1:%u/echo", (unsigned)port);
    char *argv[client_argc + 4];
    for (int i = 0; i < client_argc; i++) argv[i] = client_argv[i];
    argv[client_argc] = url;
    argv[client_argc + 1] = (char *)in_dir("ca.pem");
    argv[client_argc + 2] = (char *)cn;
    argv[client_argc + 3] = NULL;
    pid_t pid;
    fflush(stdout);
    if (posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ) != 0) return -1;
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static size_t handshakes(sockeye_server *server) {
    size_t n = 0;
    for (size_t w = 0; w < sockeye_server_worker_count(server); w++) {
        sockeye_stats st;
        if (sockeye_server_stats(server, w, &st) == SOCKEYE_OK) n += st.tls_handshakes;
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s CERTDIR CLIENT...\n", argv[0]);
        return 2;
    }
    snprintf(dir, sizeof dir, "%s", argv[1]);
    client_argv = argv + 2;
    client_argc = argc - 2;

    const char *provider = sockeye_tls_provider();
    check("sockeye_tls_provider names ring or aws-lc-rs",
          provider != NULL && (strcmp(provider, "ring") == 0 || strcmp(provider, "aws-lc-rs") == 0),
          provider ? provider : "NULL");
    const char *want = getenv("SOCKEYE_EXPECT_PROVIDER");
    if (want != NULL && provider != NULL)
        check("sockeye_tls_provider is SOCKEYE_EXPECT_PROVIDER", strcmp(provider, want) == 0, provider);

    sockeye_config d;
    sockeye_config_default(&d);
    check("tls_cert_file and tls_key_file default to NULL (ws://)",
          d.tls_cert_file == NULL && d.tls_key_file == NULL, "not NULL");
    check("SOCKEYE_ERR_TLS has its own text",
          strstr(sockeye_strerror(SOCKEYE_ERR_TLS), "TLS") != NULL,
          sockeye_strerror(SOCKEYE_ERR_TLS));

    /* What sockeye_server_new refuses. */
    sockeye_config cfg = config(in_dir("cert.pem"), in_dir("no-such-key.pem"));
    refused("a missing key file is SOCKEYE_ERR_TLS", &cfg, SOCKEYE_ERR_TLS, "no-such-key.pem");
    cfg = config(in_dir("cert.pem"), in_dir("key2.pem"));
    refused("a key that is not the certificate's is SOCKEYE_ERR_TLS", &cfg, SOCKEYE_ERR_TLS,
            "TLS");
    cfg = config(in_dir("cert.pem"), in_dir("ca.pem"));
    refused("a key file with no key in it is SOCKEYE_ERR_TLS", &cfg, SOCKEYE_ERR_TLS,
            "private key");
    cfg = config(in_dir("cert.pem"), NULL);
    refused("tls_cert_file without tls_key_file is SOCKEYE_ERR_INVALID_ARGUMENT", &cfg,
            SOCKEYE_ERR_INVALID_ARGUMENT, NULL);

    /* A plain server: nothing to reload. */
    cfg = config(NULL, NULL);
    sockeye_server *plain = NULL;
    sockeye_result rc = sockeye_server_new(&cfg, NULL, NULL, &plain);
    if (rc == SOCKEYE_ERR_BACKEND_UNAVAILABLE) {
        printf("skipped: the backend is not available on this kernel\n");
        return 77;
    }
    check_rc("a plain server", rc, SOCKEYE_OK);
    if (plain) {
        check_rc("a plain server refuses a TLS reload",
                 sockeye_server_reload_tls(plain, in_dir("cert.pem"), in_dir("key.pem")),
                 SOCKEYE_ERR_TLS);
        check_last_error("... and sockeye_last_error() says why", "does not serve TLS");
        sockeye_server_free(plain);
    }

    /* The wss:// server. */
    cfg = config(in_dir("cert.pem"), in_dir("key.pem"));
    sockeye_callbacks cb = {0};
    cb.on_message = on_message;
    sockeye_server *server = NULL;
    rc = sockeye_server_new(&cfg, &cb, NULL, &server);
    check_rc("a server with tls_cert_file and tls_key_file", rc, SOCKEYE_OK);
    if (rc != SOCKEYE_OK) return 1;
    uint16_t port = sockeye_server_local_port(server);
    printf("listening on wss://127.0.0.1:%u/\n", (unsigned)port);
    struct runner runner = {server, SOCKEYE_ERR_PANIC};
    pthread_t run_thread;
    if (pthread_create(&run_thread, NULL, run_server, &runner) != 0) {
        check("server thread", 0, "pthread_create failed");
        sockeye_server_free(server);
        return 1;
    }

    check("a client verifies the certificate (CN localhost) and echoes over wss://",
          client(port, "localhost") == 0, "the client failed (its output above)");
    size_t n = handshakes(server);
    char why[128];
    snprintf(why, sizeof why, "tls_handshakes summed over the workers: %zu", n);
    check("sockeye_stats counts the TLS handshake", n >= 1, why);

    check_rc("sockeye_server_reload_tls with the second pair",
             sockeye_server_reload_tls(server, in_dir("cert2.pem"), in_dir("key2.pem")),
             SOCKEYE_OK);
    check("a new client sees the second certificate (CN sockeye-test-2)",
          client(port, "sockeye-test-2") == 0, "the client failed (its output above)");

    check_rc("reload with a certificate file that does not exist is SOCKEYE_ERR_TLS",
             sockeye_server_reload_tls(server, in_dir("gone.pem"), in_dir("key.pem")),
             SOCKEYE_ERR_TLS);
    check_last_error("... and sockeye_last_error() names the file", "gone.pem");
    check_rc("reload with a key file holding no key is SOCKEYE_ERR_TLS",
             sockeye_server_reload_tls(server, in_dir("cert.pem"), in_dir("ca.pem")),
             SOCKEYE_ERR_TLS);
    check_last_error("... and sockeye_last_error() says the key is the problem", "private key");
    check_rc("reload with a NULL key is SOCKEYE_ERR_NULL",
             sockeye_server_reload_tls(server, in_dir("cert.pem"), NULL), SOCKEYE_ERR_NULL);
    check_rc("reload of a NULL server is SOCKEYE_ERR_NULL",
             sockeye_server_reload_tls(NULL, in_dir("cert.pem"), in_dir("key.pem")),
             SOCKEYE_ERR_NULL);
    check("after the failed reloads the second certificate is still served",
          client(port, "sockeye-test-2") == 0, "the client failed (its output above)");

    check_rc("stop", sockeye_server_stop(server), SOCKEYE_OK);
    pthread_join(run_thread, NULL);
    check_rc("sockeye_server_run returns SOCKEYE_OK", runner.rc, SOCKEYE_OK);
    sockeye_server_free(server);
    printf("stopped\n");
    return failures ? 1 : 0;
}
