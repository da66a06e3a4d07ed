#!/bin/bash
# run_email_bench.sh: the email benchmark (docs/benchmarks.md, "Email").
# Prints figures; it is not a test and fails only on a run that could not
# be measured (a message refused or lost).
#
# Builds the postern_core library (Release, cmake into BUILD_DIR) and the
# two tools with gcc, then runs
#   smtp_bench  N_SMTP messages of ~1 KB through smtp_out (libESMTP on
#               worker threads, SMTP_OUT_BATCH messages per session) to an
#               in-process SMTP sink, once per worker count in WORKERS;
#   lmtp_bench  N_LMTP messages of ~2 KB into lmtp_in (in process, the
#               callbacks accept at once) over K client connections for
#               each K in CONNS, then mime_parse N_MIME times on the same
#               message.
# Everything binds 127.0.0.1 on free ports and runs in these processes.
#
# Environment: BUILD_DIR (default <repo>/build-bench), N_SMTP (5000),
# SMTP_SIZE (1024), WORKERS ("1 2 3 4"), N_LMTP (20000), LMTP_SIZE (2048),
# CONNS ("1 4 16"), N_MIME (20000), REPEAT (1: runs of each tool).
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build-bench}
N_SMTP=${N_SMTP:-5000}
SMTP_SIZE=${SMTP_SIZE:-1024}
WORKERS=${WORKERS:-1 2 3 4}
N_LMTP=${N_LMTP:-20000}
LMTP_SIZE=${LMTP_SIZE:-2048}
CONNS=${CONNS:-1 4 16}
N_MIME=${N_MIME:-20000}
REPEAT=${REPEAT:-1}
PKGS="libstrophe libevent_core libevent_extra libevent_pthreads hiredis
jansson libcurl libconfig libcrypto libssl gmime-3.0 libxml-2.0"

die() {
    echo "run_email_bench: $*" >&2
    exit 1
}

cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null ||
    die "cmake configure failed"
cmake --build "$BUILD_DIR" -j"$(nproc)" --target postern_core >/dev/null ||
    die "building postern_core failed"
# libESMTP: pkg-config name on Debian 12, else the plain library.
if pkg-config --exists libesmtp-1.0; then
    ESMTP=$(pkg-config --libs libesmtp-1.0)
else
    ESMTP=-lesmtp
fi
# shellcheck disable=SC2046,SC2086
for t in smtp_bench lmtp_bench; do
    gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror \
        -I"$ROOT/src" -I"$ROOT/transports" -I"$ROOT/transports/email" \
        "$ROOT/bench/$t.c" "$BUILD_DIR/libpostern_core.a" \
        $(pkg-config --cflags --libs $PKGS) $ESMTP -lpthread -lm \
        -o "$BUILD_DIR/$t" || die "building $t failed"
done

echo "== $(date -u '+%F %T UTC'), $(nproc) CPUs, $(uname -r)"
status=0
for r in $(seq "$REPEAT"); do
    echo "== SMTP out: $N_SMTP messages, batch per session from smtp_out.h" \
        "(run $r)"
    # shellcheck disable=SC2086
    timeout 300 "$BUILD_DIR/smtp_bench" -n "$N_SMTP" -s "$SMTP_SIZE" \
        $WORKERS || status=1
done
for r in $(seq "$REPEAT"); do
    echo "== LMTP in: $N_LMTP messages, callbacks answer at once;" \
        "mime_parse $N_MIME times (run $r)"
    # shellcheck disable=SC2086
    timeout 300 "$BUILD_DIR/lmtp_bench" -n "$N_LMTP" -s "$LMTP_SIZE" \
        -m "$N_MIME" $CONNS || status=1
done
[ "$status" = 0 ] || die "a run failed (see above)"
