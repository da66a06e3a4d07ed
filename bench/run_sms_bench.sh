#!/bin/bash
# run_sms_bench.sh: the SMS benchmark (docs/benchmarks.md). Prints figures;
# it is not a test and never fails on a missed target, only on a run that
# could not be measured.
#
# Builds postern (Release, cmake into build-bench/) and the bench tools,
# starts a private redis-server (appendonly yes, appendfsync everysec: the
# durable setting), then for each phase a fresh postern (so VmHWM and CPU
# time are the phase's own) against xmpp_load, which plays the XMPP
# server's side of XEP-0114 and hosts the fast Twilio provider:
#   a  raw curl-multi POST ceiling (bench/curl_ceiling.c) -> fast provider
#   b  XMPP -> provider, as fast as possible, N messages
#   c  XMPP -> provider at 5,000 msg/s for 10 s: latency
#   d  10,000 messages in flight (provider holds each request 2 s)
#   e  raw evhttp webhook ceiling, then signed webhooks -> postern -> XMPP
# Everything binds 127.0.0.1 on free ports; every process is stopped by
# PID; each phase is bounded by a timeout.
#
# Environment: BUILD_DIR (default <repo>/build-bench), N_MAX (20000),
# N_IN (20000), RATE (5000), LAT_SECONDS (10), N_FLIGHT (10000),
# CONC (16: provider max_connections, curl and webhook concurrency),
# LOG_LEVEL (info), PHASES ("a b c d e": the phases to run), KEEP=1 keeps the work directory, PERF=1 records
# `perf record $PERF_ARGS` (default -g; try "--call-graph dwarf") of
# postern during phases b and e (reports in the work directory).
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build-bench$([ "${PERF:-0}" = 1 ] && echo -perf)}
N_MAX=${N_MAX:-20000}
N_IN=${N_IN:-20000}
RATE=${RATE:-5000}
LAT_SECONDS=${LAT_SECONDS:-10}
N_FLIGHT=${N_FLIGHT:-10000}
CONC=${CONC:-16}
LOG_LEVEL=${LOG_LEVEL:-info}
PERF=${PERF:-0}
PERF_ARGS=${PERF_ARGS:--g}
PHASES=${PHASES:-a b c d e}
WORK=$(mktemp -d /tmp/postern-bench.XXXXXX)
SECRET=bench-secret-$$
TOKEN=bench-token-$$
SID=AC0123456789abcdef0123456789abcdef
GW=sms.localhost
PIDS=()
T_START=$(date +%s)
HZ=$(getconf CLK_TCK)

want() {
    case " $PHASES " in *" $1 "*) return 0 ;; esac
    return 1
}

die() {
    echo "run_sms_bench: $*" >&2
    exit 1
}

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null
    done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for FILE REGEX SECONDS: until a line of FILE matches.
wait_for() {
    local i
    for ((i = 0; i < $3 * 20; i++)); do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# kv LINE KEY: the value of KEY=... in a RESULT line.
kv() {
    echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}

# cpu_s PID: utime+stime in seconds.
cpu_s() {
    awk -v hz="$HZ" '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' \
        "/proc/$1/stat"
}

status_kb() {
    awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"
}

stop_pid() {
    local p=$1 i
    kill "$p" 2>/dev/null || return 0
    for ((i = 0; i < 200; i++)); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
    return 0
}

# ---- build ----------------------------------------------------------------
echo "== building (Release) into $BUILD_DIR" >&2
EXTRA_CFLAGS=
# frame pointers so that perf's call graphs mean something
[ "$PERF" = 1 ] && EXTRA_CFLAGS=-fno-omit-frame-pointer
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="$EXTRA_CFLAGS" >"$WORK/cmake.log" 2>&1 || { cat "$WORK/cmake.log" >&2; die "cmake failed"; }
cmake --build "$BUILD_DIR" -j"$(nproc)" --target postern \
    >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; die "build failed"; }
POSTERN=$BUILD_DIR/postern
mkdir -p "$BUILD_DIR/bench"
CFLAGS="-std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror"
gcc $CFLAGS -I"$ROOT/bench" "$ROOT/bench/xmpp_load.c" \
    "$ROOT/bench/fast_provider.c" "$ROOT/bench/webhook_load.c" \
    $(pkg-config --cflags --libs libevent expat libcurl libcrypto) \
    -lpthread -lm -o "$BUILD_DIR/bench/xmpp_load" || die "xmpp_load build failed"
gcc $CFLAGS "$ROOT/bench/curl_ceiling.c" \
    $(pkg-config --cflags --libs libcurl) -o "$BUILD_DIR/bench/curl_ceiling" \
    || die "curl_ceiling build failed"
LOAD=$BUILD_DIR/bench/xmpp_load
"$LOAD" selftest >/dev/null || die "xmpp_load selftest failed"

# ---- redis ------------------------------------------------------------------
REDIS_PORT=$(free_port)
mkdir -p "$WORK/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" \
    --save '' --appendonly yes --appendfsync everysec \
    --logfile "$WORK/redis.log" --daemonize no &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for ((i = 0; i < 100; i++)); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.05
done
redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || die "redis did not start"

# write_conf FILE XMPP_PORT PROVIDER_PORT HTTP_PORT
write_conf() {
    cat >"$1" <<EOF
log: { level = "$LOG_LEVEL"; format = "text"; };
redis: { url = "redis://127.0.0.1:$REDIS_PORT/0"; prefix = "bench"; };
http: { listen = "127.0.0.1:$4"; public_url = "http://127.0.0.1:$4"; };
xmpp: { host = "127.0.0.1"; port = $2; };
gateways = (
  { transport = "sms";
    jid = "$GW";
    secret = "$SECRET";
    allowed_domains = [ "localhost" ];
    numbers = [ "+15550001111" ];
    provider = { name = "twilio";
                 api_url = "http://127.0.0.1:$3";
                 account_sid = "$SID";
                 auth_token = "$TOKEN";
                 timeout = 30.0;
                 max_connections = $CONC; };
    limits = { per_user_per_minute = 0; per_user_per_day = 0;
               max_segments = 0; };
  }
);
EOF
}

# Results per phase, filled by run_phase.
declare -A R

# run_phase NAME TIMEOUT XMPP_LOAD_ARGS...: starts xmpp_load, then a fresh
# postern pointed at it; waits for xmpp_load's RESULT; records postern's
# VmHWM and CPU time and redis's CPU time for the phase.
run_phase() {
    local name=$1 timeout=$2
    shift 2
    local out=$WORK/$name.load.out err=$WORK/$name.load.err
    local xport pport hport conf=$WORK/$name.conf lpid ppid rcpu0 rcpu1
    local perf_pid=

    "$LOAD" "$@" --secret "$SECRET" --component "$GW" \
        --pid-file "$WORK/$name.pid" --timeout "$timeout" >"$out" 2>"$err" &
    lpid=$!
    PIDS+=("$lpid")
    wait_for "$out" '^READY' 10 || die "$name: xmpp_load did not start: $(cat "$err")"
    xport=$(sed -n 's/^READY xmpp_port=\([0-9]*\).*/\1/p' "$out")
    pport=$(sed -n 's/.*provider_port=\([0-9]*\).*/\1/p' "$out")
    [ "$pport" = 0 ] && pport=9
    hport=${HTTP_PORT:-$(free_port)}
    write_conf "$conf" "$xport" "$pport" "$hport"
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    rcpu0=$(cpu_s "$REDIS_PID")
    "$POSTERN" -c "$conf" 2>"$WORK/$name.postern.log" &
    ppid=$!
    PIDS+=("$ppid")
    echo "$ppid" >"$WORK/$name.pid"
    if [ "$PERF" = 1 ] && [ "$name" = max -o "$name" = in ]; then
        perf record $PERF_ARGS -o "$WORK/$name.perf.data" -p "$ppid" \
            >"$WORK/$name.perf.log" 2>&1 &
        perf_pid=$!
        PIDS+=("$perf_pid")
    fi
    wait "$lpid"
    R[$name.rc]=$?
    R[$name.line]=$(grep '^RESULT' "$out")
    if kill -0 "$ppid" 2>/dev/null; then
        R[$name.hwm]=$(status_kb "$ppid" VmHWM)
        R[$name.cpu]=$(cpu_s "$ppid")
    else
        R[$name.hwm]=?
        R[$name.cpu]=?
        echo "run_sms_bench: $name: postern exited early" >&2
    fi
    rcpu1=$(cpu_s "$REDIS_PID")
    R[$name.rcpu]=$(echo "$rcpu1 - $rcpu0" | bc)
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid" 2>/dev/null
        wait "$perf_pid" 2>/dev/null
        perf report -i "$WORK/$name.perf.data" --no-children --stdio \
            --percent-limit 1.5 >"$WORK/$name.perf.txt" 2>/dev/null
    fi
    stop_pid "$ppid"
    if [ "${R[$name.rc]}" != 0 ]; then
        echo "run_sms_bench: $name: xmpp_load reported a failure:" >&2
        sed 's/^/    /' "$err" >&2
        tail -5 "$WORK/$name.postern.log" | sed 's/^/    postern: /' >&2
    fi
}

# serve KIND: a standalone fast provider in the background; sets SRV_PID
# and SRV_PORT.
serve() {
    local out=$WORK/serve-$1.out
    "$LOAD" serve --kind "$1" -n 1 >"$out" 2>&1 &
    SRV_PID=$!
    PIDS+=("$SRV_PID")
    wait_for "$out" '^READY' 10 || die "serve $1 did not start"
    SRV_PORT=$(sed -n 's/^READY provider_port=//p' "$out")
}

# ---- a: curl-multi ceiling ----------------------------------------------------
CEIL= WCEIL=
if want a; then
echo "== a: raw curl-multi POST ceiling (N=$N_MAX, C=$CONC)" >&2
serve twilio
CEIL_BODY="To=%2B15552000001&From=%2B15550001111&Body=b1+The+quick+brown+fox+jumps+over+the+lazy+dog+0123456789&StatusCallback=http%3A%2F%2F127.0.0.1%3A8080%2Fsms%2Fsms.localhost%2Fstatus"
R[ceil.line]=$("$BUILD_DIR/bench/curl_ceiling" \
    "http://$SID:$TOKEN@127.0.0.1:$SRV_PORT/2010-04-01/Accounts/$SID/Messages.json" \
    "$N_MAX" "$CONC" "$CEIL_BODY")
stop_pid "$SRV_PID"
CEIL=$(kv "${R[ceil.line]}" req_per_s)
fi

# ---- b, c, d: XMPP -> provider ------------------------------------------------
if want b; then
    echo "== b: XMPP -> provider, max rate (N=$N_MAX)" >&2
    run_phase max 60 out -n "$N_MAX"
fi
if want c; then
    echo "== c: XMPP -> provider at $RATE msg/s for $LAT_SECONDS s" >&2
    run_phase lat 60 out -n $((RATE * LAT_SECONDS)) --rate "$RATE"
fi
if want d; then
    echo "== d: $N_FLIGHT messages in flight (provider holds requests 2 s)" >&2
    run_phase flight 90 out -n "$N_FLIGHT" --hold-ms 2000 --release-after 5
fi

# ---- e: webhooks -> XMPP ----------------------------------------------------------
if want e; then
echo "== e: raw evhttp webhook ceiling (N=$N_IN, C=$CONC)" >&2
serve ceiling
R[wceil.line]=$("$LOAD" webhook --url "http://127.0.0.1:$SRV_PORT/sms/$GW/inbound" \
    --auth-token "$TOKEN" --account-sid "$SID" -n "$N_IN" -c "$CONC")
stop_pid "$SRV_PID"
WCEIL=$(kv "${R[wceil.line]}" msgs_per_s)
echo "== e: signed webhooks -> postern -> XMPP (N=$N_IN, C=$CONC)" >&2
HTTP_PORT=$(free_port)
run_phase in 60 in -n "$N_IN" -c "$CONC" \
    --url "http://127.0.0.1:$HTTP_PORT/sms/$GW/inbound" \
    --auth-token "$TOKEN" --account-sid "$SID"
unset HTTP_PORT
fi

# Phases not run leave their entries unset: report them as empty.
set +u

# ---- report ------------------------------------------------------------------------
pct() { # pct VALUE CEILING
    if [ -n "$1" ] && [ -n "$2" ] && [ "$2" != 0 ]; then
        echo "scale=1; 100 * $1 / $2" | bc
    else
        echo "-"
    fi
}
mb() {
    if [ "$1" = "?" ] || [ -z "$1" ]; then echo "?"; else
        echo "scale=1; $1 / 1024" | bc; fi
}
verdict() { # verdict EXPR
    if [ "$(echo "$1" | bc 2>/dev/null)" = 1 ]; then echo met; else echo MISSED; fi
}

MAX=$(kv "${R[max.line]}" msgs_per_s)
IN=$(kv "${R[in.line]}" msgs_per_s)
LAT_P50=$(kv "${R[lat.line]}" p50_ms)
LAT_P99=$(kv "${R[lat.line]}" p99_ms)
LAT_RATE=$(kv "${R[lat.line]}" send_rate)
FL_PEAK=$(kv "${R[flight.line]}" peak_inflight)
FL_RSS=$(kv "${R[flight.line]}" rss_at_peak_inflight_kb)

echo
echo "postern SMS benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores," \
    "redis appendonly=yes appendfsync=everysec, log level $LOG_LEVEL," \
    "provider max_connections=$CONC"
printf '%-36s %9s %8s %8s %8s %9s %8s %8s\n' phase "msgs/s" "% ceil" \
    "p50 ms" "p99 ms" "VmHWM MB" "CPU s" "redis s"
want a && printf '%-36s %9s %8s %8s %8s %9s %8s %8s\n' \
    "a curl-multi POST ceiling" "$CEIL" "100" - - - - -
for ph in max lat flight; do
    [ -n "${R[$ph.line]+x}" ] || continue
    line=${R[$ph.line]:-}
    case $ph in
    max) label="b XMPP->provider, max rate" ;;
    lat) label="c XMPP->provider @ ${RATE}/s" ;;
    flight) label="d $N_FLIGHT in flight (hold 2 s)" ;;
    esac
    rate=$(kv "$line" msgs_per_s)
    [ "$ph" = lat ] && rate=$(kv "$line" send_rate)
    printf '%-36s %9s %8s %8s %8s %9s %8s %8s\n' "$label" "${rate:-?}" \
        "$([ "$ph" = max ] && pct "$rate" "$CEIL" || echo -)" \
        "$(kv "$line" p50_ms)" "$(kv "$line" p99_ms)" \
        "$(mb "${R[$ph.hwm]}")" "${R[$ph.cpu]}" "${R[$ph.rcpu]}"
done
want e && printf '%-36s %9s %8s %8s %8s %9s %8s %8s\n' \
    "e evhttp webhook ceiling" "$WCEIL" "100" - - - - -
want e && printf '%-36s %9s %8s %8s %8s %9s %8s %8s\n' "e webhook->XMPP" "${IN:-?}" \
    "$(pct "$IN" "$WCEIL")" "$(kv "${R[in.line]}" p50_ms)" \
    "$(kv "${R[in.line]}" p99_ms)" "$(mb "${R[in.hwm]}")" "${R[in.cpu]}" \
    "${R[in.rcpu]}"
echo
echo "targets:"
echo "  XMPP->provider >= 65% of curl ceiling: $(pct "$MAX" "$CEIL")%" \
    "$(verdict "${MAX:-0} >= 0.65 * ${CEIL:-1}")"
echo "  webhook->XMPP >= 55% of evhttp ceiling: $(pct "$IN" "$WCEIL")%" \
    "$(verdict "${IN:-0} >= 0.55 * ${WCEIL:-1}")"
echo "  p99 < 2 ms at $RATE msg/s (sent at $LAT_RATE/s): p99 ${LAT_P99:-?} ms" \
    "(p50 ${LAT_P50:-?}) $(verdict "${LAT_P99:-99} < 2")"
echo "  RSS < 30 MB with $N_FLIGHT in flight: VmRSS $(mb "${FL_RSS:-?}") MB at" \
    "peak in flight ${FL_PEAK:-?}, VmHWM $(mb "${R[flight.hwm]}") MB" \
    "$(verdict "${R[flight.hwm]:-999999} < 30720")"
echo
echo "raw:"
echo "  a ${R[ceil.line]}"
for ph in max lat flight; do echo "  ${R[$ph.line]:-$ph: no result}"; done
echo "  e ${R[wceil.line]}"
echo "  ${R[in.line]:-in: no result}"
FAILED=0
for ph in max lat flight in; do
    [ -z "${R[$ph.line]+x}" ] || [ "${R[$ph.rc]:-1}" = 0 ] || FAILED=1
done
echo "elapsed $(($(date +%s) - T_START)) s; work directory $WORK" \
    "$([ "${KEEP:-0}" = 1 ] || echo '(removed)')"
exit $FAILED
