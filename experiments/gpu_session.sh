#!/usr/bin/env bash
# What a session lent a GPU runs through the device tool (BUILD_NOTES.md, "When a GPU is lent").
#
#   bash experiments/gpu_session.sh all  # one 15-minute lease: bench, three 28x28 tries
#   bash experiments/gpu_session.sh train TASK SECONDS [--config.FIELD=VALUE ...]  # a piece of a run
#
# The device tool runs it with `carry: [".whl", "gpu_data"]` (and, for `train`, the workdir
# carried back from an earlier piece as `gpu_runs/TASK`). The lent image has jax, flax, optax,
# chex and absl-py but not ml_collections or tensorflow-datasets and no network: ml_collections
# comes from the carried wheel, MNIST from the carried IDX files through the numpy loader. Each
# job is stopped by `timeout` before the call's limit and what it made is packed into $OUT, so
# a piece cut short still brings its best parameters back. The exit status is the last job's.
set -uo pipefail

case "${1:-}" in
all)
    [ $# -eq 1 ] || { echo "all takes no arguments (the plan is in this file)" >&2; exit 2; }
    ;;
train)
    : "${2:?train needs TASK (translated60, cluttered60 or cluttered100)}"
    : "${3:?train needs the seconds this piece may run}"
    ;;
*)
    echo "usage: $0 all | train TASK SECONDS [--config.FIELD=VALUE ...]" >&2
    exit 2
    ;;
esac
: "${OUT:?OUT must name the folder the device tool fetches}"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" RAM_JAX_MNIST_DIR="$PWD/gpu_data/mnist" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
git rev-parse --short HEAD > "$OUT/commit.txt" 2>/dev/null

if [ "$1" = all ]; then
    # One call of at most 580 s (run it with timeout_s 600), revised in the fourteenth session
    # (BUILD_NOTES.md, "When a GPU is lent"; its tries changed in the eighteenth session):
    # `bench --quick`, then three tries at the 28x28 two-minute target, each one process of one
    # seed, its wall time from start to exit (results.json written) beside its log as
    # NAME.process_ms: the CPU's ten-minute recipe (its config file, mnist28_ten_minutes.py),
    # seeds 0 and 1, then mnist28.py's SGD at batch 256 and learning rate 0.04 for 400 epochs,
    # seed 0. Validation every fifth epoch and checkpoints every 60 s keep the work around the
    # fused training spans small (on the H100 a 28x28 epoch trains in 0.2 s).
    # Logs, metrics, results and best parameters are written under /tmp/res and packed into
    # $OUT/res.tgz after every job (the device tool returns at most 8 files of 16 MB); the orbax
    # checkpoints stay behind.
    res=/tmp/res
    mkdir -p "$res"
    pack() { tar czf "$OUT/res.tgz" --exclude=checkpoints -C /tmp res; }
    timeout 50 python3 -m experiments.bench --quick --out_json="$res/bench.json" \
        --out_md="$res/bench.md" > "$res/bench.log" 2>&1
    pack
    m28() {  # NAME CONFIG_FILE, then overrides
        local name=$1 config=$2 t0
        shift 2
        t0=$(date +%s%N)
        timeout 170 python3 -m experiments.train --config="experiments/configs/$config" \
            --config.data_backend=numpy --config.batch_size=256 --config.validate_every=5 \
            --config.checkpoint_every_s=60 --workdir="$res/$name" "$@" > "$res/$name.log" 2>&1
        status=$?
        echo $((($(date +%s%N) - t0) / 1000000)) > "$res/$name.process_ms"
        pack
    }
    # The CPU's ten-minute recipe (mnist28_ten_minutes.py: 0.77-0.90% there), then SGD.
    for seed in 0 1; do
        m28 "adam_te_e120_seed$seed" mnist28_ten_minutes.py --config.seed="$seed"
    done
    m28 sgd400_seed0 mnist28.py --config.learning_rate=0.04 --config.seed=0
    tail -n 3 "$res"/*.log
    grep . "$res"/*.process_ms
    exit "$status"
else
    # A piece of the config file's run (with any overrides given after SECONDS; a resumed run
    # must be given the same ones); a carried `gpu_runs/TASK` is resumed. The workdir comes
    # back whole (orbax nests deeper than the tool returns) as $OUT/TASK.tgz.00, .01, ...: one
    # archive cut into pieces under the tool's 16 MB a file (two cluttered60 seeds' checkpoints
    # are about 30 MB). Rejoin them with `cat TASK.tgz.* | tar xz -C gpu_runs` to carry the
    # workdir to the next piece or resume it on this machine (several seeds too, since
    # train.init_replicates; BUILD_NOTES.md, "When a GPU is lent").
    mkdir -p "gpu_runs/$2"
    timeout "$3" python3 -m experiments.train --config="experiments/configs/$2.py" \
        --config.data_backend=numpy --config.checkpoint_every_s=30 --workdir="gpu_runs/$2" \
        "${@:4}" > "$OUT/$2.log" 2>&1
    status=$?
    tar cz -C gpu_runs "$2" | split -d -b 15M - "$OUT/$2.tgz."
    tail -n 6 "$OUT/$2.log"
    exit "$status"
fi
