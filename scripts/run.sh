#!/usr/bin/env bash
# Builds moltgate and starts it on its embedded defaults: the demo config
# (./moltgate.yaml), development certificates created on first start in
# certs/dev/, and the built-in demo assistant.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --locked
exec ./target/release/moltgate run "$@"
