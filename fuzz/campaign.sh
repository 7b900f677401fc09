#!/usr/bin/env bash
# Runs fuzz targets one after another, each for 10 M executions or 30
# minutes, whichever comes first, then minimises its corpus into
# fuzz/corpora/<target> (committed; replayed by tests/fuzz_replay.rs).
#
#   fuzz/campaign.sh [target ...]        (default: every target in Cargo.toml)
#
# Needs a build first:  cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -s none
# Environment: RUNS (10000000), MAX_TIME (1800 s), JOBS... not used: one
# process per target keeps exec counts comparable.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-10000000}
MAX_TIME=${MAX_TIME:-1800}
BIN=target/x86_64-unknown-linux-gnu/release
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\([a-z_0-9]*\)"$/\1/p' Cargo.toml | grep -v '^moltgate-fuzz$')
fi
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "corpora/$t" "artifacts/$t"
  echo "== $t: up to $RUNS runs or $MAX_TIME s"
  "$BIN/$t" "corpus/$t" "corpora/$t" "seeds/$t" \
    -runs="$RUNS" -max_total_time="$MAX_TIME" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" -timeout=10 -rss_limit_mb=2048 \
    > "logs/$t.log" 2>&1 || echo "!! $t exited with $? (see fuzz/logs/$t.log)"
  # Minimise: the smallest set of inputs with the same coverage.
  rm -rf "corpora/$t.new" && mkdir -p "corpora/$t.new"
  "$BIN/$t" -merge=1 "corpora/$t.new" "corpora/$t" "corpus/$t" > "logs/$t.merge.log" 2>&1
  rm -rf "corpora/$t" && mv "corpora/$t.new" "corpora/$t"
  grep -E '^stat::|^#[0-9]+.*DONE|Done [0-9]+ runs' "logs/$t.log" | tail -8
  echo "   corpus: $(ls "corpora/$t" | wc -l) files, $(du -sk "corpora/$t" | cut -f1) KiB; crashes: $(ls "artifacts/$t" | wc -l)"
done
