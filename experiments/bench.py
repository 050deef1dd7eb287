"""Training and inference throughput of RAM, its model FLOP/s, and their ratio to the device's
own float32 matmul FLOP/s measured in the same run; the last stdout line is one JSON object.

    python -m experiments.bench [--quick] [--configs=mnist28,translated60,cluttered100] \
        [--batch_sizes=64,256,1024] [--out_json=bench.json] [--out_md=bench.md]

Headline configs (``default_config()`` with the retina and episode length of the paper's tasks;
images are synthetic uint8 noise made on the device, so no dataset is needed):

- ``mnist28``: 28x28, 6 glimpses of 8x8 at 1 scale;
- ``translated60``: 60x60, 8 glimpses of 12x12 at 3 scales;
- ``cluttered100``: 100x100, 8 glimpses of 12x12 at 4 scales.

Training is timed on spans of ``--num_steps`` fused steps (``make_train_chunk`` in one jitted
``lax.scan``, as ``train.py`` runs them), inference on ``evaluation.predict`` in its
deterministic mode over as many batches. Each is compiled and run once untimed, then timed
``--repeats`` times; the best time is reported (the median too, in the JSON), after
``block_until_ready``.

Model FLOPs per image come from ``ram_jax.flops``: 2 x multiply-adds of the network's layers,
training counted as 3 x forward (the model-FLOPs convention). ``executed_*`` fields hold the
jaxpr count of what the timed programs actually run (autodiff skips a few input gradients).
``--quick`` runs the three headline configs at batch 256.

Beside the n=2048 matmul (the hardware's rate), each batch size gets the rate of 20 chained
``batch x 256 @ 256 x 256`` products (``layer_matmul_flops_per_s``): the shape of the core's
product, run as a loop of bare products. ``ratio_to_layer_matmul`` compares the step with it (a
step can beat it: its episode is unrolled, and XLA:CPU pays a cost per loop iteration).

On the CPU the steps run with Eigen's products (``ram_jax.cpu_dots``: faster for their small
shapes), while XLA's default library, YNNPACK, multiplies the n=2048 matrices faster. So the
n=2048 matmul is timed with both, the YNNPACK one in a child process (XLA reads its flags once
per process), and ``matmul_flops_per_s`` is the faster of the two: the ratio is taken against the
best this machine does, not against the library the steps happen to use. Both rates are in
``matmul_flops_per_s_by_library``.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags, logging

from ram_jax import cpu_dots, evaluation, train
from ram_jax.config import default_config, validate_config
from ram_jax.flops import TRAIN_FORWARD_MULTIPLE, jaxpr_flops, ram_flops
from ram_jax.tasks import get_task

# Fields overridden per headline config, and the synthetic image side. The task only decides
# whether training canvases arrive with the retina's zero margin (``train.training_image_margin``:
# generated tasks make them so); the images themselves are always synthetic.
HEADLINE_CONFIGS: dict[str, dict[str, Any]] = {
    "mnist28": {
        "task": "mnist28",
        "image_size": 28,
        "num_glimpses": 6,
        "glimpse_size": 8,
        "glimpse_scales": 1,
    },
    "translated60": {
        "task": "translated60",
        "image_size": 60,
        "num_glimpses": 8,
        "glimpse_size": 12,
        "glimpse_scales": 3,
    },
    "cluttered100": {
        "task": "cluttered100",
        "image_size": 100,
        "num_glimpses": 8,
        "glimpse_size": 12,
        "glimpse_scales": 4,
    },
}
QUICK_BATCH_SIZE = 256

_CONFIGS = flags.DEFINE_list(
    "configs", list(HEADLINE_CONFIGS), f"Headline configs to run, of {list(HEADLINE_CONFIGS)}."
)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "256", "1024"], "Batch sizes to run.")
_QUICK = flags.DEFINE_bool(
    "quick", False, f"Run the three headline configs at batch {QUICK_BATCH_SIZE} only."
)
_NUM_STEPS = flags.DEFINE_integer(
    "num_steps", 20, "Fused training steps per timed span (and inference batches per call)."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls after the warm-up; the best is kept.")
_MATMUL_N = flags.DEFINE_integer(
    "matmul_n", 0, "Side of the square float32 matmul timed (0: 2048 on CPU, 8192 otherwise)."
)
_CORE = flags.DEFINE_enum("core", None, ["rnn", "lstm"], "Override the core (default: config's).")
_COMPUTE_DTYPE = flags.DEFINE_enum(
    "compute_dtype",
    "float32",
    ["float32", "bfloat16"],
    "The model's compute dtype (parameters stay float32); the matmul reference stays float32.",
)
_OUT_JSON = flags.DEFINE_string("out_json", None, "Also write the JSON report here.")
_OUT_MD = flags.DEFINE_string("out_md", None, "Also write the markdown table here.")

FLAGS = flags.FLAGS


# --------------------------------------------------------------------------------------------
# Pieces


def bench_config(
    name: str, core: str | None = None, compute_dtype: str = "float32"
) -> tuple[ml_collections.ConfigDict, int]:
    """``default_config()`` with a headline config's retina and episode; and its image side."""
    if name not in HEADLINE_CONFIGS:
        raise ValueError(f"unknown config {name!r}; expected one of {list(HEADLINE_CONFIGS)}")
    fields = dict(HEADLINE_CONFIGS[name])
    image_size = fields.pop("image_size")
    config = default_config()
    config.update(fields)
    if core is not None:
        config.core = core
    config.compute_dtype = compute_dtype
    validate_config(config)
    return config, image_size


def synthetic_dataset(key: jax.Array, num_images: int, side: int, num_classes: int):
    """uint8 noise images [N, side, side] and random labels, generated on the device."""

    # One jitted program: op-by-op dispatch would compile each random op on its own, slowly.
    @jax.jit
    def make(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        image_key, label_key = jax.random.split(key)
        images = jax.random.bits(image_key, (num_images, side, side), jnp.uint8)
        labels = jax.random.randint(label_key, (num_images,), 0, num_classes, jnp.int32)
        return images, labels

    return train.Dataset(*make(key))


def best_and_median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Wall time of ``fn()`` (its outputs waited for), best and median of ``repeats`` calls."""
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def matmul_flops_per_s(n: int, repeats: int = 10) -> float:
    """Best FLOP/s of a jitted float32 ``n x n @ n x n`` (2 n^3 FLOPs), at default precision.

    Default precision is what the model's ``Dense`` layers use too, so both sides of the ratio
    run the same arithmetic (on GPUs that may be TF32).
    """
    a_key, b_key = jax.random.split(jax.random.key(0))
    a = jax.random.normal(a_key, (n, n), jnp.float32)
    b = jax.random.normal(b_key, (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))  # compile and warm up
    best, _ = best_and_median_seconds(lambda: matmul(a, b), repeats)
    return 2 * n**3 / best


def matmul_flops_per_s_with_xla_default(n: int, repeats: int = 10) -> float:
    """``matmul_flops_per_s(n)`` in a child process whose XLA:CPU uses its default dot library.

    For a process that asked for Eigen dots (``cpu_dots.use_eigen_dots``): XLA reads its flags
    once, so the other library can only be timed in another process.
    """
    flags_ = [f for f in os.environ.get("XLA_FLAGS", "").split() if f != cpu_dots.EIGEN_DOTS_FLAG]
    env = dict(os.environ, XLA_FLAGS=" ".join(flags_))
    code = (
        "import sys; from experiments.bench import matmul_flops_per_s; "
        "print(repr(matmul_flops_per_s(int(sys.argv[1]), int(sys.argv[2]))))"
    )
    root = pathlib.Path(__file__).resolve().parents[1]  # so that `experiments` imports
    result = subprocess.run(
        [sys.executable, "-c", code, str(n), str(repeats)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"timing the n={n} matmul with XLA's default dot library failed:\n{result.stderr}"
        )
    return float(result.stdout.strip().splitlines()[-1])


def reference_matmul_rates(n: int) -> dict[str, float]:
    """The n x n matmul's FLOP/s by dot library: this process's, and on a CPU that uses Eigen
    dots, XLA's default (YNNPACK) too. Keys: ``"eigen"``, ``"xla_default"``."""
    here = matmul_flops_per_s(n)
    if jax.default_backend() != "cpu" or not cpu_dots.eigen_dots_requested():
        return {"xla_default": here}
    return {"eigen": here, "xla_default": matmul_flops_per_s_with_xla_default(n)}


LAYER_WIDTH = 256  # the core's width: its products are batch x 256 by 256 x 256


def layer_matmul_flops_per_s(batch_size: int, repeats: int = 10, chain: int = 20) -> float:
    """Best FLOP/s of ``chain`` dependent float32 ``batch x 256 @ 256 x 256`` products.

    The training step is a chain of such small products, one glimpse after another, so this
    is their rate on this device when run as a loop (the step's unrolled episode can beat it:
    XLA:CPU pays a cost per loop iteration); the n=2048 matmul is the ceiling of the hardware.
    Chained in one jitted loop so that dispatch does not count.
    """
    x_key, w_key = jax.random.split(jax.random.key(1))
    x = jax.random.normal(x_key, (batch_size, LAYER_WIDTH), jnp.float32)
    # Scaled so that repeated products keep their magnitude (no overflow to inf).
    w = jax.random.normal(w_key, (LAYER_WIDTH, LAYER_WIDTH), jnp.float32) / LAYER_WIDTH**0.5

    @jax.jit
    def run(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.lax.fori_loop(0, chain, lambda _, h: h @ w, x)

    jax.block_until_ready(run(x, w))
    best, _ = best_and_median_seconds(lambda: run(x, w), repeats)
    return chain * 2 * batch_size * LAYER_WIDTH**2 / best


class TrainSpan(NamedTuple):
    """One jitted span of fused training steps, ready to run repeatedly."""

    run: Callable[[], Any]  # runs one span (carry threaded from call to call); returns outputs
    flops: int  # FLOPs of one span as jaxpr_flops counts them (what is executed)
    images: int  # images processed per span
    params: Any  # the initial parameters, reused to time inference on the same model
    data: train.Dataset  # the synthetic training set (no margin), reused for inference


def _train_span(
    config: ml_collections.ConfigDict, image_size: int, batch_size: int, num_steps: int
) -> TrainSpan:
    """A training span as ``train_and_evaluate`` builds it, on a synthetic dataset.

    The step is ``train.make_train_chunk_for``'s, every option of ``config`` included, at
    ``batch_size``. The span covers a whole "epoch" (``steps_per_epoch = num_steps``) of
    ``num_steps * batch`` synthetic images.
    """
    config = config.copy_and_resolve_references()
    config.batch_size = batch_size
    model, spec = train.build_model(config), train.rollout_spec(config)
    optimizer = train.make_optimizer(config, num_steps)
    keys = train.run_keys(config.seed)
    data = synthetic_dataset(keys.data, num_steps * batch_size, image_size, config.num_classes)
    # A generated task makes each training canvas with the retina's zero margin on the device;
    # synthetic canvases get it once here, and are not generated (generation is not timed).
    margin = train.training_image_margin(config, get_task(config.task))
    train_data = train.Dataset(
        jnp.pad(data.images, ((0, 0), (margin, margin), (margin, margin))), data.labels
    )
    # Jitted for the same reason as the dataset: eager init compiles every op separately.
    state = jax.jit(
        lambda key: train.init_train_state(model, spec, optimizer, key, (image_size, image_size))
    )(keys.init)
    if config.temporal_ensemble_weight > 0:  # as train_and_evaluate starts it: no averages yet
        rows = (len(data.labels), config.num_classes + 1)
        state = state.replace(soft_targets=jnp.zeros(rows, jnp.float32))
    # The step training runs for this config, every option included; the canvases given.
    chunk = train.make_train_chunk_for(
        config,
        model,
        spec,
        optimizer,
        num_steps=num_steps,
        steps_per_epoch=num_steps,
        generate_canvases=False,
    )
    epoch, first_step = jnp.int32(0), jnp.int32(0)
    carry = train.LoopCarry(state, jnp.array(-1, jnp.int32))
    flops = jaxpr_flops(chunk, carry, train_data, keys.data, keys.step, epoch, first_step)
    jitted = jax.jit(chunk)

    def run() -> Any:
        nonlocal carry
        carry, metrics = jitted(carry, train_data, keys.data, keys.step, epoch, first_step)
        return carry, metrics

    return TrainSpan(run, flops, num_steps * batch_size, state.params, data)


def bench_one(
    name: str,
    batch_size: int,
    *,
    num_steps: int,
    repeats: int,
    core: str | None = None,
    compute_dtype: str = "float32",
) -> dict[str, Any]:
    """Training and inference throughput and FLOPs of one headline config at one batch size."""
    config, image_size = bench_config(name, core, compute_dtype)
    model_flops = ram_flops(config)

    # Building, tracing, compiling and one warm-up span: reported, not part of the timing.
    setup_start = time.perf_counter()
    span = _train_span(config, image_size, batch_size, num_steps)
    jax.block_until_ready(span.run())  # compiles, and warms up
    train_setup_s = time.perf_counter() - setup_start
    train_best, train_median = best_and_median_seconds(span.run, repeats)

    model, spec = train.build_model(config), train.rollout_spec(config)
    params, images = span.params, span.data.images
    eval_key = jax.random.key(2)

    def infer() -> jax.Array:
        return evaluation.predict(model, params, images, eval_key, spec, batch_size=batch_size)

    infer_flops = jaxpr_flops(
        evaluation.predict, model, params, images, eval_key, spec, batch_size=batch_size
    )
    jax.block_until_ready(infer())
    infer_best, infer_median = best_and_median_seconds(infer, repeats)

    n_images = span.images
    train_ips = n_images / train_best
    infer_ips = len(images) / infer_best
    return {
        "name": name,
        "image_size": image_size,
        "num_glimpses": config.num_glimpses,
        "glimpse_size": config.glimpse_size,
        "glimpse_scales": config.glimpse_scales,
        "core": config.core,
        "compute_dtype": config.compute_dtype,
        "batch_size": batch_size,
        "num_steps": num_steps,
        "images_per_s": train_ips,
        "images_per_s_median": n_images / train_median,
        "inference_images_per_s": infer_ips,
        "inference_images_per_s_median": len(images) / infer_median,
        "model_flops_per_image": model_flops.training,
        "inference_model_flops_per_image": model_flops.inference,
        "executed_flops_per_image": span.flops / n_images,
        "inference_executed_flops_per_image": infer_flops / len(images),
        "model_flops_per_s": model_flops.training * train_ips,
        "inference_model_flops_per_s": model_flops.inference * infer_ips,
        "train_setup_s": train_setup_s,
    }


# --------------------------------------------------------------------------------------------
# Report


def run_bench(
    names: list[str],
    batch_sizes: list[int],
    *,
    num_steps: int,
    repeats: int,
    matmul_n: int,
    core: str | None = None,
    compute_dtype: str = "float32",
) -> dict[str, Any]:
    """The whole report: the matmul reference, then every (config, batch size) row."""
    if not matmul_n:
        matmul_n = 2048 if jax.default_backend() == "cpu" else 8192
    matmul_rates = reference_matmul_rates(matmul_n)
    peak = max(matmul_rates.values())
    print(
        f"float32 matmul n={matmul_n}: {peak / 1e9:,.1f} GFLOP/s ("
        + ", ".join(f"{lib}: {rate / 1e9:,.1f}" for lib, rate in matmul_rates.items())
        + ")",
        file=sys.stderr,
        flush=True,
    )
    layer_rates = {b: layer_matmul_flops_per_s(b) for b in batch_sizes}
    for b, rate in layer_rates.items():
        print(
            f"float32 {b} x {LAYER_WIDTH} @ {LAYER_WIDTH} x {LAYER_WIDTH}, chained: "
            f"{rate / 1e9:,.1f} GFLOP/s ({100 * rate / peak:.1f}% of the n={matmul_n} matmul)",
            file=sys.stderr,
            flush=True,
        )
    rows = []
    for name in names:
        for batch_size in batch_sizes:
            row = bench_one(
                name,
                batch_size,
                num_steps=num_steps,
                repeats=repeats,
                core=core,
                compute_dtype=compute_dtype,
            )
            row["ratio_to_matmul"] = row["model_flops_per_s"] / peak
            row["inference_ratio_to_matmul"] = row["inference_model_flops_per_s"] / peak
            row["layer_matmul_flops_per_s"] = layer_rates[batch_size]
            row["ratio_to_layer_matmul"] = row["model_flops_per_s"] / layer_rates[batch_size]
            rows.append(row)
            print(
                f"{name} batch {batch_size}: train {row['images_per_s']:,.0f} img/s "
                f"({100 * row['ratio_to_matmul']:.1f}% of matmul), inference "
                f"{row['inference_images_per_s']:,.0f} img/s",
                file=sys.stderr,
                flush=True,
            )
    return {
        "device": train.describe_device(),
        "jax_version": jax.__version__,
        "commit": train.git_commit(),
        "matmul_n": matmul_n,
        "matmul_flops_per_s": peak,
        "matmul_flops_per_s_by_library": matmul_rates,
        "step_dot_library": "eigen" if "eigen" in matmul_rates else "xla_default",
        "compute_dtype": compute_dtype,
        "ratio_to_matmul": min(row["ratio_to_matmul"] for row in rows),
        "flops_convention": (
            "model FLOPs = 2 x multiply-adds of the dense layers (elementwise ops not counted); "
            f"training = {TRAIN_FORWARD_MULTIPLE} x forward; ratios use best-of-repeats times"
        ),
        "num_steps": num_steps,
        "repeats": repeats,
        "configs": rows,
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a markdown table (FLOPs in mega/giga units), with its reference line."""
    lines = [
        f"Device: {report['device']}; jax {report['jax_version']}; commit {report['commit']}; "
        f"model compute dtype {report['compute_dtype']}",
        "",
        f"float32 matmul (n={report['matmul_n']}): "
        f"{report['matmul_flops_per_s'] / 1e9:,.1f} GFLOP/s, the best of "
        + ", ".join(
            f"{lib} {rate / 1e9:,.1f}"
            for lib, rate in report["matmul_flops_per_s_by_library"].items()
        )
        + f"; the steps use {report['step_dot_library']} dots",
        "",
        "| config | batch | train img/s | train MFLOP/img | train GFLOP/s | train % matmul "
        "| train % layer matmul | infer img/s | infer MFLOP/img | infer GFLOP/s "
        "| infer % matmul |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["configs"]:
        lines.append(
            f"| {r['name']} | {r['batch_size']} | {r['images_per_s']:,.0f} "
            f"| {r['model_flops_per_image'] / 1e6:.2f} | {r['model_flops_per_s'] / 1e9:,.1f} "
            f"| {100 * r['ratio_to_matmul']:.1f} | {100 * r['ratio_to_layer_matmul']:.1f} "
            f"| {r['inference_images_per_s']:,.0f} "
            f"| {r['inference_model_flops_per_image'] / 1e6:.2f} "
            f"| {r['inference_model_flops_per_s'] / 1e9:,.1f} "
            f"| {100 * r['inference_ratio_to_matmul']:.1f} |"
        )
    layer = sorted({(r["batch_size"], r["layer_matmul_flops_per_s"]) for r in report["configs"]})
    lines += [
        "",
        f"Layer matmul: {LAYER_WIDTH}-wide products chained at the row's batch size (the "
        "shape of the core's product), "
        + ", ".join(f"batch {b}: {rate / 1e9:,.1f} GFLOP/s" for b, rate in layer)
        + ".",
        "",
        f"FLOPs: {report['flops_convention']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    cpu_dots.use_eigen_dots()  # what training uses; before the first computation
    if _QUICK.value:
        named = [f"--{f}" for f in ("configs", "batch_sizes") if FLAGS[f].present]
        if named:
            raise app.UsageError(f"--quick runs its own configs and batch size: drop {named}")
        names, batch_sizes = list(HEADLINE_CONFIGS), [QUICK_BATCH_SIZE]
    else:
        names = _CONFIGS.value
        try:
            batch_sizes = [int(b) for b in _BATCH_SIZES.value]
        except ValueError as e:
            raise app.UsageError(f"--batch_sizes must be integers: {e}") from e
    unknown = sorted(set(names) - set(HEADLINE_CONFIGS))
    if unknown or not names:
        raise app.UsageError(f"--configs: unknown {unknown}; known {list(HEADLINE_CONFIGS)}")
    if not batch_sizes or min(batch_sizes) < 1 or _NUM_STEPS.value < 1:
        raise app.UsageError("--batch_sizes and --num_steps must be positive")
    if _REPEATS.value < 1 or _MATMUL_N.value < 0:
        raise app.UsageError(
            f"--repeats must be >= 1 and --matmul_n >= 0 (0: the default size), got "
            f"{_REPEATS.value} and {_MATMUL_N.value}"
        )
    for out in (_OUT_JSON.value, _OUT_MD.value):
        # Checked now, not after minutes of timing.
        if out and not pathlib.Path(out).absolute().parent.is_dir():
            raise app.UsageError(f"no folder {pathlib.Path(out).parent} for {out}")

    report = run_bench(
        names,
        batch_sizes,
        num_steps=_NUM_STEPS.value,
        repeats=_REPEATS.value,
        matmul_n=_MATMUL_N.value,
        core=_CORE.value,
        compute_dtype=_COMPUTE_DTYPE.value,
    )
    table = markdown_table(report)
    if _OUT_JSON.value:
        pathlib.Path(_OUT_JSON.value).write_text(json.dumps(report, indent=2, sort_keys=True))
    if _OUT_MD.value:
        pathlib.Path(_OUT_MD.value).write_text(table)
    print(table, flush=True)
    print(json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    app.run(main)
