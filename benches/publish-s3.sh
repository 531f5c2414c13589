#!/usr/bin/env bash
# Benchmark, not a test: `pgimg publish s3` against `aws s3 cp` (PyPI awscli) on
# the same file and the same moto server on 127.0.0.1. Until the CLI is wired,
# the `pgimg-publish` binary (publish/src/bin/pgimg-publish.rs) stands in for
# `pgimg publish s3`; it makes the same library call.
#
#   benches/publish-s3.sh [SIZE_MIB] [RUNS]      (defaults: 1024 MiB, 3 runs)
#
# Prints a Markdown table of median wall times. Both tools upload random
# (incompressible) data with their defaults (the same: 8 MiB parts, 10 at
# once), plus pgimg with 16 MiB parts, 8 at once. pgimg's time
# includes hashing the whole file (for the sidecar and the skip check), the
# HEAD request and the sidecar upload.
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib="${1:-1024}"
runs="${2:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgimg-target}"

# moto from tests/setup.sh's virtualenv, and the AWS CLI (the baseline) in it.
bash tests/setup.sh
venv="${PGIMG_TOOLS_DIR:-/var/tmp/pgimg-tools}/venv"
[ -x "$venv/bin/aws" ] || "$venv/bin/python" -m pip install --quiet --disable-pip-version-check awscli
export PATH="$venv/bin:$PATH"
cargo build --release --quiet -p pgimg-publish --bin pgimg-publish
pgimg="$CARGO_TARGET_DIR/release/pgimg-publish"

work="$(mktemp -d /var/tmp/pgimg-bench.XXXXXX)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
cleanup() {
  kill "$moto_pid" 2>/dev/null || true
  wait "$moto_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
endpoint="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('$endpoint/moto-api/')" 2>/dev/null && break
  sleep 0.3
done
aws --endpoint-url "$endpoint" s3api create-bucket --bucket bench >/dev/null

image="$work/image.raw"
head -c "$((size_mib << 20))" /dev/urandom >"$image"
cat "$image" >/dev/null # page cache warm for every tool alike

# seconds TOOL-ARGS... : wall time of one command, its output discarded.
seconds() {
  local start end
  start="$(date +%s.%N)"
  if ! "$@" >"$work/out" 2>"$work/err"; then
    echo "benchmark command failed: $*" >&2
    cat "$work/err" >&2
    exit 1
  fi
  end="$(date +%s.%N)"
  python3 -c "print(f'{$end - $start:.2f}')"
}

delete() {
  aws --endpoint-url "$endpoint" s3 rm --recursive --quiet s3://bench/ >/dev/null
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

declare -a aws_t pg_t pg16_t skip_t
for i in $(seq 1 "$runs"); do
  aws_t+=("$(seconds aws --endpoint-url "$endpoint" s3 cp --only-show-errors "$image" "s3://bench/aws-$i.raw")")
  delete
  pg_t+=("$(seconds "$pgimg" s3 "$image" --quiet --bucket bench --key "pgimg-$i.raw" \
    --endpoint "$endpoint" --region us-east-1 --path-style)")
  # The same object again: hash, HEAD, sidecar check, nothing uploaded.
  skip_t+=("$(seconds "$pgimg" s3 "$image" --quiet --bucket bench --key "pgimg-$i.raw" \
    --endpoint "$endpoint" --region us-east-1 --path-style)")
  grep -q '"uploaded":false' "$work/out" || { echo "re-run uploaded again" >&2; exit 1; }
  delete
  pg16_t+=("$(seconds "$pgimg" s3 "$image" --quiet --bucket bench --key "pgimg16-$i.raw" \
    --endpoint "$endpoint" --region us-east-1 --path-style --part-size-mib 16 --concurrency 8)")
  delete
done

rate() { python3 -c "print(f'{$size_mib / $1:.0f}')"; }
row() {
  local name="$1"; shift
  local m; m="$(median "$@")"
  echo "| $name | $* | $m | $(rate "$m") |"
}
echo "File: $size_mib MiB of random data; server: moto_server $(python3 -c 'import importlib.metadata as m; print(m.version("moto"))') on 127.0.0.1; $runs runs; $(nproc) cores."
echo
echo "| tool | runs (s) | median (s) | MiB/s |"
echo "|---|---|---|---|"
row "aws s3 cp (awscli $(aws --version 2>&1 | cut -d' ' -f1 | cut -d/ -f2); 8 MiB parts, 10 at once)" "${aws_t[@]}"
row "pgimg publish s3 (defaults: 8 MiB parts, 10 at once)" "${pg_t[@]}"
row "pgimg publish s3 (16 MiB parts, 8 at once)" "${pg16_t[@]}"
row "pgimg publish s3, re-run (hash + HEAD + sidecar check, nothing uploaded)" "${skip_t[@]}"
