#!/usr/bin/env bash
# Benchmark, not a test: how long pgimg takes from SIGINT to exit at three
# moments of a build on the Debian fixture (`pgimg run` without --base), and,
# in the same run, how long the interrupted work takes when left alone:
#
#   busy   a recipe busy in file primitives (600000 write_file calls)
#   hash   the output stage hashing the 2 GiB raw image
#   qcow2  `qemu-img convert -c` of an image holding 600 MiB of random data
#
#   sudo benches/interrupt.sh          (PGIMG=/path/to/pgimg skips the release build)
#
# Prints one line per measurement and a Markdown table row per moment:
# signal to exit, and the uninterrupted time of that work.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgimg-target}"
. benches/lib.sh
bench_start interrupt
cat >"$work/busy.rhai" <<'EOF'
log("looping");
for i in 0..600000 { write_file("/var/tmp/pgimg-loop", `${i}`); }
EOF
echo 'log("nothing to do");' >"$work/hash.rhai"
cat >"$work/qcow2.rhai" <<'EOF'
run(["dd", "if=/dev/urandom", "of=/var/tmp/noise", "bs=1M", "count=600", "status=none"]);
EOF

now() { date +%s.%N; }

# interrupt NAME MARKER [ARGS...]: runs the recipe, sends SIGINT once a log
# line matches MARKER (a grep -E pattern), prints seconds from signal to exit.
interrupt() {
    local name="$1" marker="$2"
    shift 2
    rm -f "$work/$name.raw"
    "$pgimg" run "$work/$name.rhai" --output "$work/$name.raw" "$@" 2>"$work/$name.log" &
    local pid=$!
    until grep -qE "$marker" "$work/$name.log"; do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$work/$name.log" >&2; exit 1; }
        sleep 0.05
    done
    local sent
    sent="$(now)"
    kill -INT "$pid"
    wait "$pid" || true
    awk -v a="$sent" -v b="$(now)" 'BEGIN { printf "%.2f\n", b - a }'
}

# alone NAME MARKER_START MARKER_END [ARGS...]: seconds between two log lines
# of an uninterrupted build (pgimg's log has no timestamps: the time each line
# was first seen).
alone() {
    local name="$1" start="$2" end="$3"
    shift 3
    rm -f "$work/$name.raw" "$work/$name.raw".*
    "$pgimg" run "$work/$name.rhai" --output "$work/$name.raw" "$@" 2>"$work/$name.log" &
    local pid=$! t0="" t1=""
    while [ -z "$t1" ]; do
        if [ -z "$t0" ] && grep -qE "$start" "$work/$name.log"; then t0="$(now)"; fi
        if [ -n "$t0" ] && grep -qE "$end" "$work/$name.log"; then t1="$(now)"; fi
        if ! kill -0 "$pid" 2>/dev/null && [ -z "$t1" ]; then
            if grep -qE "$end" "$work/$name.log"; then t1="$(now)"; else tail -n 20 "$work/$name.log" >&2; exit 1; fi
        fi
        sleep 0.05
    done
    wait "$pid" || true
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }'
}

row() {
    echo "$1: SIGINT to exit $2 s; uninterrupted $3 s (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    printf '| %s | %s s | %s s |\n' "$1" "$2" "$3"
}

busy_int="$(interrupt busy 'looping$')"
busy_all="$(alone busy 'looping$' 'stage recipe (done|failed)')"
row "busy in file primitives" "$busy_int" "$busy_all"

hash_int="$(interrupt hash '^pgimg: stage output \.\.\.')"
hash_all="$(alone hash '^pgimg: stage output \.\.\.' '^pgimg: stage output done')"
row "hashing the 2 GiB output" "$hash_int" "$hash_all"

qcow_marker='^pgimg: stage output \.\.\.'
qcow_int="$(interrupt qcow2 "$qcow_marker" --format qcow2 --compress)"
qcow_all="$(alone qcow2 "$qcow_marker" '^pgimg: stage output done' --format qcow2 --compress)"
row "qemu-img convert -c (600 MiB random data)" "$qcow_int" "$qcow_all"
