#!/bin/bash
# quickstart: try postern on one machine in a few minutes.
#
# Installs the build dependencies (Debian 12, as root), builds postern into
# ./build, then starts a private redis-server and a private Prosody on
# loopback, both with their own configuration and data under $RUN_DIR,
# creates two test users, writes a postern configuration with the sandbox
# SMS provider (outbound SMS go to a file, inbound SMS come from
# `postern-admin sms-inject`) and runs postern until Ctrl-C.
#
# It never touches the system's Prosody or Redis services and never uses
# systemctl: everything it starts, it stops again by PID. Re-running it is
# safe: state under $RUN_DIR is reused, stale processes from an earlier
# run are stopped first.
#
# Environment:
#   POSTERN_RUN_DIR    where configs, data and logs go
#                      (default /tmp/postern-quickstart)
#   POSTERN_BUILD_DIR  cmake build directory (default ./build)
#   POSTERN_BIN        use this postern binary instead of building
#                      (POSTERN_ADMIN_BIN: postern-admin beside it)
#   POSTERN_SKIP_APT=1 do not install packages
#   POSTERN_NO_RUN=1   set everything up, print the instructions, stop again
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN_DIR=${POSTERN_RUN_DIR:-/tmp/postern-quickstart}
BUILD_DIR=${POSTERN_BUILD_DIR:-$ROOT/build}

DOMAIN=localhost
GW=sms.localhost
NUMBER_ALICE=+15550001111
NUMBER_SPARE=+15550002222
CONTACT=+15551234567

DEPS="build-essential cmake pkg-config libstrophe-dev libevent-dev
libhiredis-dev libjansson-dev libcurl4-openssl-dev libconfig-dev libssl-dev
libgmime-3.0-dev libxml2-dev libesmtp-dev
redis-server prosody python3-slixmpp openssl"

say() { printf '\033[1mquickstart:\033[0m %s\n' "$*"; }
die() { printf 'quickstart: error: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ] && [ "${POSTERN_SKIP_APT:-0}" != 1 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -E "$0" "$@"
    fi
    die "run me as root (or set POSTERN_SKIP_APT=1 with the packages installed)"
fi

# --- packages ---------------------------------------------------------------

missing_packages() {
    local p
    for p in $DEPS; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
            grep -q '^install ok installed$' || printf '%s ' "$p"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages)
    [ -n "$missing" ] || return 0
    say "installing: $missing"
    # Installing prosody/redis-server would start their system services.
    # Ask invoke-rc.d not to, for this install only, unless the machine
    # already has a policy of its own.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
    } || rc=$?
    [ "$added_policy" = 1 ] && rm -f "$policy"
    [ "$rc" = 0 ] || die "apt-get failed (exit $rc)"
}

[ "${POSTERN_SKIP_APT:-0}" = 1 ] || install_packages

# --- build ------------------------------------------------------------------

if [ -n "${POSTERN_BIN:-}" ]; then
    # Already built or installed elsewhere.
    POSTERN=$POSTERN_BIN
    ADMIN=${POSTERN_ADMIN_BIN:-$(dirname "$POSTERN_BIN")/postern-admin}
else
    say "building into $BUILD_DIR"
    cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        >/dev/null
    cmake --build "$BUILD_DIR" -j"$(nproc)" --target postern postern-admin
    POSTERN=$BUILD_DIR/postern
    ADMIN=$BUILD_DIR/postern-admin
fi
[ -x "$POSTERN" ] && [ -x "$ADMIN" ] || die "build produced no binaries"

# --- process bookkeeping ----------------------------------------------------

mkdir -p "$RUN_DIR"
chmod 700 "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd -P)
cd "$RUN_DIR"

# A PID from a pidfile is ours only if that process still runs inside
# $RUN_DIR (all three are started there; Prosody moves on to its data
# directory below it), so a recycled PID is never signalled.
ours() {
    local pid=$1 cwd
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
    case "$cwd/" in
    "$RUN_DIR"/*) return 0 ;;
    esac
    return 1
}

stop_pid() { # name pid
    local name=$1 pid=$2 _
    ours "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 150); do
        ours "$pid" || return 0
        sleep 0.1
    done
    say "$name ($pid) did not stop in 15 s, killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

stop_stale() {
    local name
    for name in postern prosody redis tail; do
        if [ -f "$RUN_DIR/$name.pid" ]; then
            stop_pid "$name" "$(cat "$RUN_DIR/$name.pid")"
            rm -f "$RUN_DIR/$name.pid"
        fi
    done
}

cleanup() {
    trap - EXIT INT TERM HUP
    # Output may go to a pipe whose reader died with the same Ctrl-C
    # (./quickstart.sh | tee log): stopping must not depend on it.
    set +e
    trap '' PIPE
    echo
    say "stopping"
    # postern before Prosody and Redis so it can drain and close its
    # stream cleanly.
    stop_stale
    say "stopped; state kept in $RUN_DIR"
}

# setsid: Ctrl-C reaches only this script, whose trap then stops each
# process with one SIGTERM, in order.
start_bg() { # name logfile cmd...
    local name=$1 logfile=$2
    shift 2
    setsid "$@" >>"$logfile" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() { # preferred fallback_start
    local p=$1
    port_taken "$p" || { echo "$p"; return; }
    for p in $(seq "$2" $(($2 + 200))); do
        port_taken "$p" || { echo "$p"; return; }
    done
    die "no free port near $2"
}

wait_port() { # name port pidname
    local _
    for _ in $(seq 1 100); do
        port_taken "$2" && return 0
        ours "$(cat "$RUN_DIR/$3.pid")" || break
        sleep 0.1
    done
    die "$1 did not start listening on 127.0.0.1:$2 (see $RUN_DIR/$3.log)"
}

secret() { head -c 24 /dev/urandom | base64 | tr -d '/+=' | cut -c1-20; }

stop_stale
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# --- secrets (made once, kept across runs) ----------------------------------

umask 077
[ -s sms.secret ] || secret >sms.secret
[ -s alice.password ] || secret >alice.password
[ -s bob.password ] || secret >bob.password
COMPONENT_SECRET=$(cat sms.secret)
ALICE_PW=$(cat alice.password)
BOB_PW=$(cat bob.password)

# --- ports ------------------------------------------------------------------

REDIS_PORT=$(free_port 6379 16379)
C2S_PORT=$(free_port 5222 15222)
COMPONENT_PORT=$(free_port 5347 15347)
HTTP_PORT=$(free_port 8080 18080)

# --- redis ------------------------------------------------------------------

say "starting redis-server on 127.0.0.1:$REDIS_PORT"
start_bg redis redis.log redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
    --dir "$RUN_DIR" --save "" --appendonly yes --daemonize no \
    --protected-mode yes
wait_port redis-server "$REDIS_PORT" redis

# --- prosody ----------------------------------------------------------------

mkdir -p prosody-data certs
if command -v openssl >/dev/null 2>&1 && [ ! -s certs/localhost.crt ]; then
    # Self-signed, so clients that insist on TLS can connect; TLS is offered
    # but not required on this loopback-only server.
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost" \
        -keyout certs/localhost.key -out certs/localhost.crt 2>/dev/null
fi

cat >prosody.cfg.lua <<EOF
-- Written by postern's deploy/quickstart.sh; rewritten on every run.
-- A private, loopback-only Prosody for trying postern out.
run_as_root = true
daemonize = false
pidfile = "$RUN_DIR/prosody-internal.pid"
data_path = "$RUN_DIR/prosody-data"
certificates = "$RUN_DIR/certs"
log = { info = "$RUN_DIR/prosody.log" }

interfaces = { "127.0.0.1" }
c2s_ports = { $C2S_PORT }
c2s_interfaces = { "127.0.0.1" }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
allow_registration = false

-- Where postern connects (XEP-0114).
component_ports = { $COMPONENT_PORT }
component_interfaces = { "127.0.0.1" }

modules_enabled = {
    "roster"; "saslauth"; "tls"; "disco"; "carbons"; "private";
    "vcard_legacy"; "version"; "uptime"; "time"; "ping"; "blocklist";
}
modules_disabled = { "s2s" }

VirtualHost "$DOMAIN"

Component "$GW"
    component_secret = "$COMPONENT_SECRET"
EOF

say "starting Prosody: c2s 127.0.0.1:$C2S_PORT, components 127.0.0.1:$COMPONENT_PORT"
start_bg prosody prosody.log prosody -F --config "$RUN_DIR/prosody.cfg.lua"
wait_port prosody "$COMPONENT_PORT" prosody
wait_port prosody "$C2S_PORT" prosody

prosodyctl --config "$RUN_DIR/prosody.cfg.lua" register alice "$DOMAIN" \
    "$ALICE_PW" >/dev/null
prosodyctl --config "$RUN_DIR/prosody.cfg.lua" register bob "$DOMAIN" \
    "$BOB_PW" >/dev/null

# --- postern ----------------------------------------------------------------

cat >postern.conf <<EOF
# Written by postern's deploy/quickstart.sh; rewritten on every run.
# See conf/postern.conf.example for every key.
log:   { level = "info"; format = "text"; };
redis: { url = "redis://127.0.0.1:$REDIS_PORT/0"; prefix = "postern"; };
http:  { listen = "127.0.0.1:$HTTP_PORT"; };
xmpp:  { host = "127.0.0.1"; port = $COMPONENT_PORT; };

gateways = (
  { transport = "sms";
    jid = "$GW";
    secret_file = "$RUN_DIR/sms.secret";
    allowed_domains = [ "$DOMAIN" ];
    numbers = [ "$NUMBER_ALICE", "$NUMBER_SPARE" ];
    provider = { name = "sandbox";
                 outbox_file = "$RUN_DIR/outbox.jsonl"; };
  }
);
EOF
touch outbox.jsonl

"$POSTERN" -c "$RUN_DIR/postern.conf" --check ||
    die "postern rejected the generated configuration"

REGISTERED=1
if ! "$ADMIN" -c "$RUN_DIR/postern.conf" add "$GW" "alice@$DOMAIN" \
    "$NUMBER_ALICE"; then
    REGISTERED=0
    say "warning: postern-admin add failed; register from the client instead"
fi

say "starting postern (log: $RUN_DIR/postern.log)"
: >postern.log
start_bg postern postern.log "$POSTERN" -c "$RUN_DIR/postern.conf"
POSTERN_PID=$(cat postern.pid)
sleep 1
ours "$POSTERN_PID" || { cat postern.log >&2; die "postern exited at start"; }

cat <<EOF

======================================================================
 postern is running (PID $POSTERN_PID), attached to a private Prosody.

 XMPP accounts (server 127.0.0.1, port $C2S_PORT, TLS optional):
   alice@$DOMAIN   password $ALICE_PW
   bob@$DOMAIN     password $BOB_PW
 SMS gateway: $GW; numbers $NUMBER_ALICE, $NUMBER_SPARE
 alice is $( [ "$REGISTERED" = 1 ] && echo "registered to $NUMBER_ALICE" ||
            echo "NOT registered yet" ).

 1. Send an SMS: log in as alice@$DOMAIN with any XMPP client and send a
    message to $CONTACT@$GW, or from this machine:
      $ROOT/deploy/quickstart-client.py --port $C2S_PORT \\
          alice@$DOMAIN '$ALICE_PW' $CONTACT@$GW "hello"
    (bob can register himself: send "register $NUMBER_SPARE" to $GW,
    or "help" for the commands.)

 2. Watch what the sandbox provider "sent":
      tail -f $RUN_DIR/outbox.jsonl

 3. Receive an SMS (it arrives at alice from $CONTACT@$GW):
      $ADMIN -c $RUN_DIR/postern.conf \\
          sms-inject $GW --from $CONTACT --to $NUMBER_ALICE "hi"

 Health and metrics: http://127.0.0.1:$HTTP_PORT/healthz  /metrics
 Logs: $RUN_DIR/{postern,prosody,redis}.log

 Ctrl-C stops postern, Prosody and Redis.
======================================================================

EOF

if [ "${POSTERN_NO_RUN:-0}" = 1 ]; then
    exit 0
fi

tail -n +1 -F postern.log &
echo $! >tail.pid
while ours "$POSTERN_PID"; do
    sleep 1
done
say "postern exited; see $RUN_DIR/postern.log"
exit 1
