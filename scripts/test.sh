#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests
# (the real gateway on ephemeral loopback ports, over real TLS), and every
# benchmark once in test mode. Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# The shape ARCHITECTURE.md promises: function and file sizes, no import cycles.
python3 scripts/structure.py
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Benchmarks run once each (criterion's test mode); then unit and integration tests.
cargo test --locked --bench '*' 2>&1 | tee "$log"
cargo test --locked --lib --bins --tests 2>&1 | tee -a "$log"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
