#!/usr/bin/env bash
# Runs every fuzz target in turn, one process at a time, from the seed corpus (fuzz/seeds, made
# from the hostile-header table) plus what earlier runs found (fuzz/corpus, not committed).
#
#   fuzz/run.sh                 # each target: 10 million executions or 15 minutes, first reached
#   RUNS=20000 TIME=60 fuzz/run.sh   # a smoke run
#   fuzz/run.sh carrier_kafka   # one target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Stable toolchains work: RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz pass its nightly-only flags. No sanitizer (`-s none`): the code under test forbids
# `unsafe`, and the targets look for panics, assertion failures and timeouts; debug assertions
# (overflow checks) are on (`-a`).
set -euo pipefail
cd "$(dirname "$0")"
RUNS="${RUNS:-10000000}"
TIME="${TIME:-900}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(carrier_map carrier_kafka carrier_amqp carrier_nats carrier_sqs consumer_layer)
fi
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== $target"
    cargo fuzz run -s none -a "$target" "corpus/$target" "seeds/$target" -- \
        -runs="$RUNS" -max_total_time="$TIME" -max_len=20000 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1
done
