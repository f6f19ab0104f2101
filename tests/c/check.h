/* The TAP-like checks the C tests share: `ok NAME` or `FAIL NAME: WHY` on stdout (flushed, so
 * the lines keep their order beside a child process's), and `failures` for the exit status. */
#ifndef SOCKEYE_TEST_CHECK_H
#define SOCKEYE_TEST_CHECK_H

#include <stdio.h>

#include <sockeye.h>

static int failures = 0;

static inline void check(const char *name, int ok, const char *why) {
    if (ok) {
        printf("ok %s\n", name);
    } else {
        failures++;
        printf("FAIL %s: %s\n", name, why);
    }
    fflush(stdout);
}

/* A call's result is `want`; says what came instead, with the library's last error. */
static inline void check_rc(const char *name, sockeye_result got, sockeye_result want) {
    char why[512];
    snprintf(why, sizeof why, "expected %d (%s), got %d (%s); last error: %s", (int)want,
             sockeye_strerror(want), (int)got, sockeye_strerror(got), sockeye_last_error());
    check(name, got == want, why);
}

#endif
