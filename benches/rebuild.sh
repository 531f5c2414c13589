#!/usr/bin/env bash
# Benchmark, not a test: pgimg against the pipeline it replaces, side by side
# in one run, on the Debian fixture (2 GiB) grown to the same final size.
#
#   seed   the bash build as far as this machine allows: a copy of the base,
#          a native grow (virt-resize boots an appliance VM, which needs the
#          network; sgdisk and resize2fs do its work, and their cost is
#          reported on its own), the root attached by offset (kpartx needs
#          partition support), e2fsck and resize2fs, the root mounted with
#          /dev, /dev/pts, /proc and /sys bound, the work in one `chroot bash`,
#          its cleanup, the `dd` zero-fill, unmount, detach, and the
#          `sha256sum` its workflow runs on the result;
#   pgimg  `pgimg run --no-cache` on the same base and size: every step runs
#          (the step cache would skip the small workload's `run` on a second
#          run); the base's digest is remembered from the first run, as it is
#          for a user who builds from the same base again.
#
# Two workloads: `noop` (nothing) and `small` (a user and 2000 small files).
# Each is run RUNS times (default 3); the median is reported.
#
# Then the step cache: recipes/standard.rhai in its offline configuration
# (the one tests/recipes_real.rs builds: PostgreSQL 15 from Debian's mirror,
# release downloads from recipes/fixtures/releases served on 127.0.0.1), a
# full build with an empty cache against a rebuild after a change in its
# last module (recipes/common/cleanup.rhai, in a copy of the recipes).
# STANDARD=0 leaves this part out; WORKLOADS="" leaves out the first;
# KEEP_LOGS=DIR keeps the standard builds' logs there.
#
#   sudo benches/rebuild.sh            (PGIMG=/path/to/pgimg skips the release build)
#   SIZE=4G RUNS=3 sudo benches/rebuild.sh
#
# Prints one line per run on stderr, then Markdown table rows: median seconds
# of each pipeline, the ratio, pgimg's stage times, and the output's allocated
# size against the root file system's used blocks.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgimg-target}"
. benches/lib.sh
bench_start rebuild
size="${SIZE:-4G}"
runs="${RUNS:-3}"
small_sh='useradd -m bench && mkdir -p /opt/bench && for i in $(seq 1 2000); do echo "$i" >/opt/bench/f$i; done'

# The fixture: built once by pgimg itself, then found by its manifest.
echo 'log("nothing to do");' >"$work/noop.rhai"
printf 'run(["sh", "-c", %s]);\n' "$(printf '%s' "$small_sh" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')" >"$work/small.rhai"
"$pgimg" run "$work/noop.rhai" --output "$work/warm.raw" 2>"$work/warm.log" || { tail -n 20 "$work/warm.log" >&2; exit 1; }
base="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["base"]["path"])' "$work/warm.raw.manifest.json")"
rm -f "$work"/warm.raw*

now() { date +%s.%N; }
# Before each timed run, untimed: the previous run's dirty pages written back
# (the seed's zero-fill leaves gigabytes of them), so neither pipeline pays
# for the other's writeback (nor for ext4 still freeing the blocks of the
# file the other just deleted).
settle() { sync; sleep 3; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# seed WORKLOAD: prints "total grow" seconds.
seed() {
    local script="$1" img="$work/seed.raw" mnt="$work/seed-mnt" lo t0 tg
    settle
    t0="$(now)"
    cp --sparse=always -- "$base" "$img"
    tg="$(now)"
    truncate -s "$size" "$img"
    sgdisk -e "$img" >/dev/null
    local first guid
    first="$(sgdisk -i 1 "$img" | awk '/^First sector:/ { print $3 }')"
    guid="$(sgdisk -i 1 "$img" | awk '/^Partition unique GUID:/ { print $4 }')"
    sgdisk -d 1 -n "1:$first:0" -t 1:8300 -u "1:$guid" "$img" >/dev/null
    local grow_s
    grow_s="$(since "$tg")"
    local last
    last="$(sgdisk -i 1 "$img" | awk '/^Last sector:/ { print $3 }')"
    lo="$(losetup --find --show --offset $((first * 512)) --sizelimit $(((last - first + 1) * 512)) "$img")"
    e2fsck -fp "$lo" >/dev/null
    resize2fs "$lo" >/dev/null 2>&1
    mkdir -p "$mnt"
    mount "$lo" "$mnt"
    rm -f "$mnt/etc/resolv.conf" && cp /etc/resolv.conf "$mnt/etc/resolv.conf"
    for d in dev dev/pts proc sys; do mount --bind "/$d" "$mnt/$d"; done
    chroot "$mnt" bash -c "set -uexo pipefail; export DEBIAN_FRONTEND=noninteractive; $script" >/dev/null 2>&1
    chroot "$mnt" bash -c 'rm -f /etc/ssh/ssh_host_*; passwd -d root >/dev/null; apt-get clean;
        rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/* /root/.bash_history \
            /root/.lesshst /root/.cache /tmp/* /var/tmp/* /var/lib/cloud' >/dev/null 2>&1
    dd if=/dev/zero of="$mnt/zero.fill" bs=1M status=none 2>/dev/null || true
    rm -f "$mnt/zero.fill"
    : >"$mnt/etc/machine-id"
    for d in sys proc dev/pts dev; do umount "$mnt/$d"; done
    umount "$mnt"
    losetup -d "$lo"
    sha256sum "$img" >"$img.sha256"
    echo "$(since "$t0") $grow_s"
    rm -f "$img" "$img.sha256"
}

# pgimg WORKLOAD: prints total seconds; keeps the last log and manifest.
pgimg_run() {
    local name="$1" out="$work/pgimg.raw" t0
    rm -f "$out" "$out".*
    settle
    t0="$(now)"
    "$pgimg" run "$work/$name.rhai" --no-cache --base "$base" --size "$size" --output "$out" 2>"$work/pgimg-$name.log" ||
        { tail -n 20 "$work/pgimg-$name.log" >&2; exit 1; }
    since "$t0"
    echo
}

# allocated/used for the last pgimg output: its allocated bytes against the
# root file system's used blocks.
allocation() {
    local out="$work/pgimg.raw" first last lo used alloc
    first="$(sgdisk -i 1 "$out" | awk '/^First sector:/ { print $3 }')"
    last="$(sgdisk -i 1 "$out" | awk '/^Last sector:/ { print $3 }')"
    lo="$(losetup --find --show --read-only --offset $((first * 512)) --sizelimit $(((last - first + 1) * 512)) "$out")"
    used="$(dumpe2fs -h "$lo" 2>/dev/null | awk -F: '/^Block count/ { c = $2 } /^Free blocks/ { f = $2 } /^Block size/ { b = $2 } END { print (c - f) * b }')"
    losetup -d "$lo"
    alloc="$(($(stat -c %b "$out") * 512))"
    awk -v a="$alloc" -v u="$used" 'BEGIN { printf "%.0f MiB allocated, root uses %.0f MiB: %.2f×", a / 1048576, u / 1048576, a / u }'
}

for name in ${WORKLOADS-noop small}; do
    script=true
    [ "$name" = small ] && script="$small_sh"
    seed_t=() grow_t=() pg_t=()
    for _ in $(seq "$runs"); do
        read -r t g < <(seed "$script")
        seed_t+=("$t") grow_t+=("$g")
        pg_t+=("$(pgimg_run "$name")")
        echo "$name: seed ${seed_t[-1]} s (grow ${grow_t[-1]} s), pgimg ${pg_t[-1]} s (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    done
    s="$(printf '%s\n' "${seed_t[@]}" | median)"
    g="$(printf '%s\n' "${grow_t[@]}" | median)"
    p="$(printf '%s\n' "${pg_t[@]}" | median)"
    stages="$(awk '/^pgimg:   / { printf "%s%s %s s", sep, $2, $3; sep = ", " }' "$work/pgimg-$name.log")"
    printf '| %s to %s | %s s (grow %s s) | %s s | %s× | %s | %s |\n' \
        "$name" "$size" "$s" "$g" "$p" "$(awk -v s="$s" -v p="$p" 'BEGIN { printf "%.1f", s / p }')" \
        "$stages" "$(allocation)"
done

[ "${STANDARD:-1}" = 1 ] || exit 0
cp -r recipes flavors "$work/"
python3 -u -m http.server --bind 127.0.0.1 --directory recipes/fixtures/releases 0 \
    >"$work/releases.port" 2>"$work/releases.log" &
server=$!
trap 'kill "$server" 2>/dev/null; rm -rf -- "$work"' EXIT
until grep -q port "$work/releases.port"; do sleep 0.1; done
port="$(awk '{ for (i = 1; i < NF; i++) if ($i == "port") print $(i + 1) }' "$work/releases.port" | head -n 1)"
standard() { # NAME: the build's total seconds; its log in $work/standard-NAME.log
    local t0
    t0="$(now)"
    "$pgimg" run "$work/recipes/standard.rhai" --base "$base" --size "$size" \
        --output "$work/standard-$1.raw" --cache-dir "$work/cache" \
        --set pg_versions=15 --set package_lists=debian-bookworm --assets "$work/recipes/fixtures" \
        --set skip=pgdg,golang-backports,walg,pguint,azure,cloud-init,grub \
        --mirror "releases=http://127.0.0.1:$port" 2>"$work/standard-$1.log" ||
        { tail -n 20 "$work/standard-$1.log" >&2; exit 1; }
    since "$t0"
}
stage() { awk -v s="$2" '$1 == "pgimg:" && $2 == s && $3 ~ /^[0-9.]+$/ { print $3 }' "$work/standard-$1.log"; }
# A first build warms the host's download and apt caches (the step cache is
# then emptied): the two measured builds differ only in the step cache.
standard warmup >/dev/null
rm -rf "$work/cache/steps" "$work"/standard-warmup.raw*
full="$(standard full)"
# Inside the module's last function (post_installation_script, called last):
# a statement at a module's top level would run where it is imported, at the
# start of the recipe, and rightly miss every checkpoint.
python3 - "$work/recipes/common/cleanup.rhai" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read().rstrip("\n")
assert text.endswith("}"), "cleanup.rhai ends with its last function"
open(path, "w").write(text[:-1] + '    write_file("/etc/pgimg-bench-change", "changed\\n");\n}\n')
PY
re="$(standard rebuild)"
resumed="$(grep -o 'resumed after .*' "$work/standard-rebuild.log" | head -n 1 || true)"
resumed="${resumed:-no checkpoint matched (log: $work/standard-rebuild.log, kept)}"
[ -n "${KEEP_LOGS:-}" ] && cp "$work"/standard-*.log "$KEEP_LOGS/"
echo "standard: full ${full} s (recipe $(stage full recipe) s), rebuild ${re} s (recipe $(stage rebuild recipe) s): ${resumed}" >&2
printf '| standard, offline, to %s | full build %s s (recipe %s s) | rebuild after a change in cleanup.rhai %s s (recipe %s s) | recipe stage %s %% of the full build | %s |\n' \
    "$size" "$full" "$(stage full recipe)" "$re" "$(stage rebuild recipe)" \
    "$(awk -v a="$(stage rebuild recipe)" -v b="$(stage full recipe)" 'BEGIN { printf "%.1f", 100 * a / b }')" "$resumed"
