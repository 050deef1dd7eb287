#!/usr/bin/env bash
# What a session lent a GPU runs through the device tool (BUILD_NOTES.md, "When a GPU is lent").
#
#   bash experiments/gpu_session.sh bench28            # call 1: bench, then the 28x28 recipe
#   bash experiments/gpu_session.sh train TASK SECONDS  # later calls: a piece of TASK's run
#
# The device tool runs it with `carry: [".whl", "gpu_data"]` (and, for `train`, the workdir
# carried back from an earlier piece as `gpu_runs/TASK`). The lent image has jax, flax, optax,
# chex and absl-py but not ml_collections or tensorflow-datasets and no network: ml_collections
# comes from the carried wheel, MNIST from the carried IDX files through the numpy loader. Each
# job is stopped by `timeout` before the call's limit and what it made is copied to $OUT, so a
# piece cut short still brings its checkpoint and best parameters back. The exit status is the
# last job's.
set -uo pipefail

case "${1:-}" in
bench28) ;;
train)
    : "${2:?train needs TASK (translated60, cluttered60 or cluttered100)}"
    : "${3:?train needs the seconds this piece may run}"
    ;;
*)
    echo "usage: $0 bench28 | train TASK SECONDS" >&2
    exit 2
    ;;
esac
: "${OUT:?OUT must name the folder the device tool fetches}"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" RAM_JAX_MNIST_DIR="$PWD/gpu_data/mnist" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
git rev-parse --short HEAD > "$OUT/commit.txt" 2>/dev/null

if [ "$1" = bench28 ]; then
    # Issue 4: throughput and the ratio to the card's matmul rate, then the 28x28 recipe (the
    # config file's, over 8 seeds at once: replicates cost little more than one on a GPU)
    # against the two-minute target; its metrics.jsonl times every epoch.
    timeout 150 python3 -m experiments.bench --batch_sizes=256,4096 \
        --out_json="$OUT/bench.json" --out_md="$OUT/bench.md" > "$OUT/bench.log" 2>&1
    timeout 300 python3 -m experiments.train --config=experiments/configs/mnist28.py \
        --config.data_backend=numpy --config.num_seeds=8 --workdir=/tmp/w28 \
        > "$OUT/mnist28.log" 2>&1
    status=$?
    mkdir -p "$OUT/mnist28"
    cp /tmp/w28/*.json /tmp/w28/*.jsonl /tmp/w28/*.msgpack "$OUT/mnist28/" 2>/dev/null
else
    # A piece of the config file's full-length run; a carried `gpu_runs/TASK` is resumed.
    mkdir -p "gpu_runs/$2"
    timeout "$3" python3 -m experiments.train --config="experiments/configs/$2.py" \
        --config.data_backend=numpy --workdir="gpu_runs/$2" > "$OUT/$2.log" 2>&1
    status=$?
    cp -r "gpu_runs/$2" "$OUT/$2"
fi
tail -n 3 "$OUT"/*.log
exit "$status"
