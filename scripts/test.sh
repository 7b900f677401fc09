#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests
# (the real gateway on ephemeral loopback ports, over real TLS), and every
# benchmark once in test mode.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
cargo test --locked --doc
