#!/bin/bash
# run-tests: the whole test suite, as CI runs it (.ci/run calls this).
#
#   1. installs the build and test dependencies (Debian 12, as root) when
#      any is missing;
#   2. builds with -Werror and ASan+UBSan into build-ci and runs every
#      ctest test (unit, integration, fuzz corpus replay);
#   3. builds without sanitizers into build-valgrind and runs each unit
#      test under valgrind (any error or leak fails);
#   4. checks formatting with clang-format.
#
# Every stage runs even when an earlier one failed (except that nothing is
# tested when the build failed); the exit status is non-zero when any
# stage failed. CI=true makes apt and the build quieter.
#
# Environment: POSTERN_SKIP_APT=1 skips package installation;
# POSTERN_SKIP_VALGRIND=1 skips stage 3; JOBS (default 2).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
JOBS=${JOBS:-2}
QUIET=
[ "${CI:-}" = true ] && QUIET=1

DEPS="build-essential cmake pkg-config libstrophe-dev libevent-dev
libhiredis-dev libjansson-dev libcurl4-openssl-dev libconfig-dev libssl-dev
libgmime-3.0-dev libxml2-dev libesmtp-dev
redis-server prosody libcmocka-dev python3 python3-slixmpp python3-aiohttp
python3-aiosmtpd python3-cryptography ejabberd valgrind clang-format openssl"

START=$(date +%s)
FAILED_STAGES=
CHECKS_PASSED=0
CHECKS_FAILED=0

stage() { printf '\n=== %s (%ds)\n' "$*" $(($(date +%s) - START)); }
fail() {
    printf 'run-tests: FAILED: %s\n' "$*" >&2
    FAILED_STAGES="$FAILED_STAGES
  - $*"
}

# --- 1. packages ------------------------------------------------------------

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
    echo "installing: $missing"
    if [ "$(id -u)" -ne 0 ]; then
        echo "run-tests: not root; install these first: $missing" >&2
        return 1
    fi
    # Installing prosody, redis-server and ejabberd would start their
    # system services; the tests start private instances instead.
    local policy=/usr/sbin/policy-rc.d added_policy=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local q=-q
    [ -n "$QUIET" ] && q=-qq
    {
        DEBIAN_FRONTEND=noninteractive apt-get update $q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y $q $missing
    } || rc=$?
    [ "$added_policy" = 1 ] && rm -f "$policy"
    return "$rc"
}

if [ "${POSTERN_SKIP_APT:-0}" != 1 ]; then
    stage "packages"
    install_packages || { fail "package installation"; }
fi

# --- 2. sanitized build + ctest ---------------------------------------------

build() { # dir "targets or empty" cmake-args...
    local dir=$1 targets=$2
    shift 2
    if [ -n "$QUIET" ]; then
        cmake -S . -B "$dir" "$@" >"$dir/configure.log" 2>&1 ||
            { cat "$dir/configure.log"; return 1; }
    else
        cmake -S . -B "$dir" "$@" || return 1
    fi
    # shellcheck disable=SC2086
    cmake --build "$dir" -j"$JOBS" ${targets:+--target $targets}
}

# Sanitizer reports must fail the test that triggered them.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:suppressions=$ROOT/tests/asan.supp}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

stage "build-ci: -Werror, ASan+UBSan"
mkdir -p build-ci
if build build-ci "" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOSTERN_WERROR=ON \
    -DPOSTERN_SANITIZE=ON; then
    stage "ctest (build-ci)"
    # --timeout: a default for tests that set none (integration tests set
    # their own); a hung test must not eat CI's time.
    ctest --test-dir build-ci --output-on-failure -j"$JOBS" --timeout 300 \
        --no-tests=error 2>&1 | tee build-ci/ctest.log
    rc=${PIPESTATUS[0]}
    summary=$(grep -E 'tests passed, [0-9]+ tests? failed out of' \
        build-ci/ctest.log | tail -n 1)
    if [ -n "$summary" ]; then
        total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$summary")
        nfail=$(sed -E 's/.* ([0-9]+) tests? failed.*/\1/' <<<"$summary")
        CHECKS_PASSED=$((CHECKS_PASSED + total - nfail))
        CHECKS_FAILED=$((CHECKS_FAILED + nfail))
        echo "ctest summary: $summary"
    else
        echo "ctest summary: no tests ran"
        CHECKS_FAILED=$((CHECKS_FAILED + 1))
    fi
    if [ "$rc" -ne 0 ]; then
        fail "ctest (exit $rc)"
    fi
else
    CHECKS_FAILED=$((CHECKS_FAILED + 1))
    fail "build-ci"
fi

# --- 3. valgrind pass over the unit tests -----------------------------------

if [ "${POSTERN_SKIP_VALGRIND:-0}" != 1 ]; then
    stage "build-valgrind: no sanitizers"
    mkdir -p build-valgrind
    units=$(find tests/unit -maxdepth 1 -name 'test_*.c' -printf '%f\n' \
        2>/dev/null | sed 's/\.c$//' | sort)
    if [ -z "$units" ]; then
        echo "no unit tests"
    elif build build-valgrind "$(echo $units)" -DCMAKE_BUILD_TYPE=Debug \
        -DPOSTERN_WERROR=ON; then
        stage "valgrind (unit tests)"
        for t in $units; do
            log=build-valgrind/$t.valgrind.log
            if POSTERN_TEST_DATA=$ROOT/tests/data valgrind -q \
                --suppressions="$ROOT/tests/valgrind.supp" \
                --error-exitcode=99 --leak-check=full \
                --errors-for-leak-kinds=definite,indirect \
                --show-leak-kinds=definite,indirect \
                --track-origins=yes --log-file="$log" \
                "build-valgrind/$t" >"build-valgrind/$t.out" 2>&1; then
                echo "valgrind $t: ok"
                CHECKS_PASSED=$((CHECKS_PASSED + 1))
            else
                echo "valgrind $t: FAILED (exit $?)"
                cat "build-valgrind/$t.out" "$log"
                CHECKS_FAILED=$((CHECKS_FAILED + 1))
                fail "valgrind $t"
            fi
        done
    else
        CHECKS_FAILED=$((CHECKS_FAILED + 1))
        fail "build-valgrind"
    fi
fi

# --- 4. formatting ----------------------------------------------------------

stage "clang-format"
if ! command -v clang-format >/dev/null 2>&1; then
    fail "clang-format is not installed"
    CHECKS_FAILED=$((CHECKS_FAILED + 1))
else
    files=$(find src transports tests/unit tests/fuzz -name '*.[ch]' \
        2>/dev/null | sort)
    if [ -z "$files" ]; then
        echo "no C files"
    elif clang-format --dry-run -Werror $files; then
        echo "clang-format: $(wc -w <<<"$files") files ok"
        CHECKS_PASSED=$((CHECKS_PASSED + 1))
    else
        CHECKS_FAILED=$((CHECKS_FAILED + 1))
        fail "clang-format (run: clang-format -i on the files above)"
    fi
fi

# --- summary ----------------------------------------------------------------

stage "done"
if [ -n "$FAILED_STAGES" ]; then
    echo "failed:$FAILED_STAGES"
fi
echo "run-tests: $CHECKS_PASSED passed, $CHECKS_FAILED failed"
[ -z "$FAILED_STAGES" ]
