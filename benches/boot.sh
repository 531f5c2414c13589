#!/usr/bin/env bash
# Benchmark, not a test: power-on to multi-user.target of a pgimg-built image
# (recipes/examples/hello.rhai on the bootable fixture), under TCG, and under
# KVM when the host's KVM works (pgimg's probe decides). Each run is one
# `pgimg verify` (a fresh overlay, BIOS and GRUB unless FIRMWARE=uefi); the
# time is pgimg's own measurement from QEMU's start to the moment systemd
# entered multi-user.target, on the host's clock.
#
#   sudo benches/boot.sh [RUNS]        (default 3; FIRMWARE=bios|uefi, CPUS, MEMORY)
#   PGIMG=/path/to/pgimg skips the release build (QEMU's time dominates;
#   a debug pgimg measures the same).
#
# Prints one line per run and a Markdown table row per accelerator (median, min, max).
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-3}"
firmware="${FIRMWARE:-bios}"
cpus="${CPUS:-2}"
memory="${MEMORY:-1024}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgimg-target}"

bash tests/setup-boot.sh
. benches/lib.sh
bench_start boot
"$pgimg" run recipes/examples/hello.rhai --output "$work/hello.raw" >"$work/build.log" 2>&1 ||
    { tail -n 30 "$work/build.log" >&2; exit 1; }

accels=(tcg)
probe="$("$pgimg" verify "$work/hello.raw" --no-recipe-checks --accel auto --timeout 600 2>&1 || true)"
if grep -q '^pgimg verify: accelerator: KVM' <<<"$probe"; then
    accels+=(kvm)
else
    echo "KVM: $(grep '^pgimg verify: accelerator:' <<<"$probe" | sed 's/^pgimg verify: accelerator: //')" >&2
fi

for accel in "${accels[@]}"; do
    times=()
    for ((i = 1; i <= runs; i++)); do
        out="$("$pgimg" verify "$work/hello.raw" --no-recipe-checks --accel "$accel" \
            --firmware "$firmware" --cpus "$cpus" --memory "$memory" --timeout 600 2>&1)" ||
            { echo "$out" >&2; exit 1; }
        t="$(sed -n 's/^ok   multi-user.target reached (\([0-9.]*\) s from power-on)$/\1/p' <<<"$out")"
        echo "$accel run $i: $t s (load $(cut -d' ' -f1 /proc/loadavg))" >&2
        times+=("$t")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk -v a="$accel" -v fw="$firmware" -v c="$cpus" -v m="$memory" '
        { t[NR] = $1 }
        END { printf "| %s | %s | %d CPUs, %d MiB | %.1f s | %.1f s | %.1f s | %d |\n",
              a, fw, c, m, t[int((NR + 1) / 2)], t[1], t[NR], NR }'
done
