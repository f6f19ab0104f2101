/*
 * config.c: what sockeye_server_new refuses, checked from C (tests/c/run.sh builds it with
 * ASan and runs it; exit status 0 when every check passed):
 *
 * - a second server on a port a first one listens on gets SOCKEYE_ERR_ADDRESS_IN_USE;
 * - with share_port set on both, both are created (and a third without it is still refused);
 * - config fields outside their documented range get SOCKEYE_ERR_INVALID_ARGUMENT;
 * - the defaults of the fields added last (worker_memory_budget, share_port, the tuning fields
 *   backlog .. uring_send_zc_threshold), and a server made with non-default tuning values.
 *
 * Prints one line per check (`ok NAME` / `FAIL NAME: why`).
 */
#include <stdio.h>
#include <string.h>

#include <sockeye.h>

#include "check.h"

static sockeye_config config(uint16_t port) {
    sockeye_config cfg;
    sockeye_config_default(&cfg);
    cfg.address = "127.0.0.1";
    cfg.port = port;
    cfg.workers = 2;
    return cfg;
}

/* Creates a server (never run); returns the result code, the server in *out on success. */
static sockeye_result create(const sockeye_config *cfg, sockeye_server **out) {
    *out = NULL;
    return sockeye_server_new(cfg, NULL, NULL, out);
}

/* Checks that `cfg` is refused with `want`, and frees a server if one was made anyway. */
static void refused(const char *name, const sockeye_config *cfg, sockeye_result want) {
    sockeye_server *s = NULL;
    sockeye_result rc = create(cfg, &s);
    char why[160];
    snprintf(why, sizeof why, "expected %d (%s), got %d (%s)", (int)want, sockeye_strerror(want),
             (int)rc, sockeye_strerror(rc));
    check(name, rc == want && s == NULL, why);
    if (s) sockeye_server_free(s);
}

int main(void) {
    sockeye_config d = config(0);
    check("share_port defaults to false", d.share_port == false, "it is true");
    check("cluster_url defaults to NULL", d.cluster_url == NULL, "it is set");
    check("buffer_cache defaults to 16 MiB", d.buffer_cache == (size_t)16 << 20, "another value");
    check("worker_memory_budget defaults to 256 MiB", d.worker_memory_budget == (size_t)256 << 20,
          "another value");
    check("SOCKEYE_ERR_ADDRESS_IN_USE has its own text",
          strstr(sockeye_strerror(SOCKEYE_ERR_ADDRESS_IN_USE), "in use") != NULL,
          sockeye_strerror(SOCKEYE_ERR_ADDRESS_IN_USE));

    /* A server owns its port. */
    sockeye_server *first = NULL;
    sockeye_config c = config(0);
    sockeye_result rc = create(&c, &first);
    check("first server", rc == SOCKEYE_OK, sockeye_strerror(rc));
    if (first) {
        uint16_t port = sockeye_server_local_port(first);
        sockeye_config again = config(port);
        refused("second server on the same port", &again, SOCKEYE_ERR_ADDRESS_IN_USE);
        again.workers = 1;
        refused("second server, one worker", &again, SOCKEYE_ERR_ADDRESS_IN_USE);
        sockeye_server_free(first);
        sockeye_server *back = NULL;
        sockeye_config freed = config(port);
        rc = create(&freed, &back);
        check("the port once the first is freed", rc == SOCKEYE_OK, sockeye_strerror(rc));
        if (back) sockeye_server_free(back);
    }

    /* Unless both share it. */
    sockeye_server *a = NULL, *b = NULL;
    sockeye_config share = config(0);
    share.share_port = true;
    rc = create(&share, &a);
    check("first sharing server", rc == SOCKEYE_OK, sockeye_strerror(rc));
    if (a) {
        share.port = sockeye_server_local_port(a);
        rc = create(&share, &b);
        check("second sharing server", rc == SOCKEYE_OK, sockeye_strerror(rc));
        check("on the same port", b && sockeye_server_local_port(b) == share.port, "another port");
        sockeye_config plain = config(share.port);
        refused("a third, not sharing, on the shared port", &plain, SOCKEYE_ERR_ADDRESS_IN_USE);
        if (b) sockeye_server_free(b);
        sockeye_server_free(a);
    }

    /* Fields out of range: the engine's check, through the C struct. */
    c = config(0);
    c.max_connections = 0;
    refused("max_connections 0", &c, SOCKEYE_ERR_INVALID_ARGUMENT);
    c = config(0);
    c.max_connections = ((size_t)1 << 20) + 1;
    refused("max_connections over 2^20", &c, SOCKEYE_ERR_INVALID_ARGUMENT);
    c = config(0);
    c.max_handshake_bytes = 100;
    refused("max_handshake_bytes 100", &c, SOCKEYE_ERR_INVALID_ARGUMENT);
    c = config(0);
    c.worker_memory_budget = 0;
    refused("worker_memory_budget 0", &c, SOCKEYE_ERR_INVALID_ARGUMENT);
    c = config(0);
    c.close_timeout_ms = 0;
    refused("close_timeout_ms 0", &c, SOCKEYE_ERR_INVALID_ARGUMENT);
    c = config(0);
    c.workers = 5000;
    refused("workers 5000", &c, SOCKEYE_ERR_INVALID_ARGUMENT);
    c = config(0);
    c.uring_entries = 1000;
    refused("uring_entries 1000 (not a power of two)", &c, SOCKEYE_ERR_INVALID_ARGUMENT);
    c = config(0);
    c.timer_tick_ms = 0;
    refused("timer_tick_ms 0", &c, SOCKEYE_ERR_INVALID_ARGUMENT);

    /* The tuning fields, last in the struct: their defaults, and values a server takes. */
    check("backlog defaults to 4096", d.backlog == 4096, "another value");
    check("read_buffer_size defaults to 256 KiB", d.read_buffer_size == (size_t)256 << 10,
          "another value");
    check("timer_tick_ms defaults to 250", d.timer_tick_ms == 250, "another value");
    check("uring_entries defaults to 1024", d.uring_entries == 1024, "another value");
    check("uring_buffers defaults to 0 (automatic)", d.uring_buffers == 0, "another value");
    check("uring_buffer_size defaults to 0 (automatic)", d.uring_buffer_size == 0,
          "another value");
    check("direct_write_min defaults to 32 KiB", d.direct_write_min == (size_t)32 << 10,
          "another value");
    check("uring_send_zc_threshold defaults to SIZE_MAX (off)",
          d.uring_send_zc_threshold == SIZE_MAX, "another value");
    c = config(0);
    c.backend = SOCKEYE_BACKEND_IO_URING;
    c.uring_entries = 64;
    c.uring_buffers = 16;
    c.uring_buffer_size = 4096;
    c.timer_tick_ms = 10;
    c.direct_write_min = SIZE_MAX;
    sockeye_server *tuned = NULL;
    rc = create(&c, &tuned);
    check("a server with small io_uring rings",
          rc == SOCKEYE_OK || rc == SOCKEYE_ERR_BACKEND_UNAVAILABLE, sockeye_strerror(rc));
    if (tuned) sockeye_server_free(tuned);

    printf("config: %s\n", failures ? "FAILED" : "all passed");
    return failures ? 1 : 0;
}
