/*
 * bench: what the benchmark tools share. One clock (CLOCK_MONOTONIC, in
 * seconds) so that timestamps taken by different threads of one process
 * can be subtracted, and the sorted-sample percentile used for every
 * latency figure. Header-only: the tools are built with plain gcc by
 * bench/run_sms_bench.sh, not by CMake.
 */
#ifndef POSTERN_BENCH_H
#define POSTERN_BENCH_H

#include <stddef.h>
#include <stdlib.h>
#include <time.h>

static inline double bench_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* Nearest-rank percentile (p in 0..100) of v[0..n), sorted in place. */
static inline double bench_percentile(double *v, size_t n, double p, int sorted)
{
    size_t rank;

    if (n == 0)
        return 0.0;
    if (!sorted)
        qsort(v, n, sizeof(*v), bench_cmp_double);
    rank = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

#endif
