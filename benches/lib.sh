# Sourced by the benches (not run): what each of them starts with.

# Sets `pgimg` to the binary to measure ($PGIMG, or a release build) and
# `work` to a fresh folder under /var/tmp named after the bench ($1), removed
# on exit. QEMU and the builds dominate, so a debug $PGIMG measures the same.
bench_start() {
    if [ -n "${PGIMG:-}" ]; then
        pgimg="$PGIMG"
    else
        cargo build --release --quiet --bin pgimg
        pgimg="$CARGO_TARGET_DIR/release/pgimg"
    fi
    work="$(mktemp -d "/var/tmp/pgimg-bench-$1.XXXXXX")"
    trap 'rm -rf -- "$work"' EXIT
}
