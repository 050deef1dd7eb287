"""Tests for experiments.bench, run in-process on a tiny setting (no speed is asserted)."""

from __future__ import annotations

import json

import pytest
from absl import app, flags

from experiments import bench
from ram_jax.flops import ram_flops

FLAGS = flags.FLAGS


def run_main(argv: list[str]) -> None:
    """``bench.main`` with these command-line flags; the flags are reset afterwards."""
    FLAGS(["bench", *argv])
    try:
        bench.main(["bench"])
    finally:
        FLAGS.unparse_flags()


def last_json_line(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_tiny_bench_reports_consistent_numbers(tmp_path, capsys):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    run_main(
        [
            "--configs=mnist28",
            "--batch_sizes=8",
            "--num_steps=2",
            "--repeats=2",
            "--matmul_n=64",
            f"--out_json={out_json}",
            f"--out_md={out_md}",
        ]
    )
    out = capsys.readouterr().out
    report = last_json_line(out)

    for key in ("matmul_flops_per_s", "configs", "ratio_to_matmul", "device", "jax_version"):
        assert key in report
    assert report["commit"]
    assert report["matmul_n"] == 64 and report["matmul_flops_per_s"] > 0
    (row,) = report["configs"]
    for key in (
        "images_per_s",
        "inference_images_per_s",
        "model_flops_per_image",
        "inference_model_flops_per_image",
        "model_flops_per_s",
        "inference_model_flops_per_s",
        "ratio_to_matmul",
        "executed_flops_per_image",
    ):
        assert row[key] > 0, key
    assert (row["name"], row["batch_size"], row["num_steps"]) == ("mnist28", 8, 2)

    config, _ = bench.bench_config("mnist28")
    expected = ram_flops(config)
    assert row["model_flops_per_image"] == expected.training
    assert row["inference_model_flops_per_image"] == expected.inference
    # The timed programs: inference runs exactly the forward; training a little under 3x.
    assert row["inference_executed_flops_per_image"] == expected.forward
    assert 2.5 * expected.forward < row["executed_flops_per_image"] <= expected.training
    assert row["model_flops_per_s"] == pytest.approx(
        row["model_flops_per_image"] * row["images_per_s"]
    )
    assert row["ratio_to_matmul"] == pytest.approx(
        row["model_flops_per_s"] / report["matmul_flops_per_s"]
    )
    assert row["inference_ratio_to_matmul"] == pytest.approx(
        row["inference_model_flops_per_s"] / report["matmul_flops_per_s"]
    )
    assert report["ratio_to_matmul"] == row["ratio_to_matmul"]
    assert row["layer_matmul_flops_per_s"] > 0
    assert row["ratio_to_layer_matmul"] == pytest.approx(
        row["model_flops_per_s"] / row["layer_matmul_flops_per_s"]
    )

    assert json.loads(out_json.read_text()) == report
    table = out_md.read_text()
    assert table in out
    assert "| mnist28 | 8 |" in table
    assert "batch 8: " in table.split("Layer matmul:")[1]


def test_reference_rates_count_their_flops(monkeypatch):
    # Every timed call "takes" half a second, so each rate is its FLOP count times two.
    monkeypatch.setattr(bench, "best_and_median_seconds", lambda fn, repeats: (0.5, 0.5))
    assert bench.matmul_flops_per_s(64) == 2 * 2 * 64**3
    width = bench.LAYER_WIDTH
    assert bench.layer_matmul_flops_per_s(8, chain=3) == 2 * 3 * 2 * 8 * width * width


def test_ratios_use_the_faster_dot_library(monkeypatch):
    # Eigen dots here at 100 FLOP/s, XLA's default library at 400 in the child process.
    monkeypatch.setattr(bench.jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(bench.cpu_dots, "eigen_dots_requested", lambda: True)
    monkeypatch.setattr(bench, "matmul_flops_per_s", lambda n, repeats=10: 100.0)
    monkeypatch.setattr(bench, "matmul_flops_per_s_with_xla_default", lambda n: 400.0)
    assert bench.reference_matmul_rates(64) == {"eigen": 100.0, "xla_default": 400.0}
    report = bench.run_bench(
        ["mnist28"], [8], num_steps=2, repeats=1, matmul_n=64, compute_dtype="float32"
    )
    assert report["matmul_flops_per_s"] == 400.0
    assert report["step_dot_library"] == "eigen"
    (row,) = report["configs"]
    assert row["ratio_to_matmul"] == pytest.approx(row["model_flops_per_s"] / 400.0)
    assert "the best of eigen 0.0, xla_default 0.0; the steps use eigen dots" in (
        bench.markdown_table(report)
    )


def test_xla_default_matmul_is_timed_in_a_child_process():
    # The child imports `experiments` from the repository and prints one float.
    assert bench.matmul_flops_per_s_with_xla_default(32, repeats=1) > 0


def test_quick_runs_the_three_headline_configs_at_batch_256(monkeypatch, capsys):
    seen = {}

    def fake_run_bench(names, batch_sizes, **kwargs):
        seen.update(names=names, batch_sizes=batch_sizes, compute_dtype=kwargs["compute_dtype"])
        rows = [
            {
                "name": name,
                "batch_size": batch_sizes[0],
                "images_per_s": 1.0,
                "model_flops_per_image": 3.0,
                "model_flops_per_s": 3.0,
                "ratio_to_matmul": ratio,
                "inference_images_per_s": 2.0,
                "inference_model_flops_per_image": 1.0,
                "inference_model_flops_per_s": 2.0,
                "inference_ratio_to_matmul": 0.5,
                "layer_matmul_flops_per_s": 5.0,
                "ratio_to_layer_matmul": 0.6,
            }
            for name, ratio in zip(names, (0.3, 0.1, 0.2), strict=True)
        ]
        return {
            "device": "d",
            "jax_version": "v",
            "commit": "c",
            "matmul_n": 4,
            "matmul_flops_per_s": 10.0,
            "matmul_flops_per_s_by_library": {"eigen": 8.0, "xla_default": 10.0},
            "step_dot_library": "eigen",
            "compute_dtype": kwargs["compute_dtype"],
            "ratio_to_matmul": min(r["ratio_to_matmul"] for r in rows),
            "flops_convention": "x",
            "configs": rows,
        }

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    run_main(["--quick"])
    assert seen == {
        "names": ["mnist28", "translated60", "cluttered100"],
        "batch_sizes": [256],
        "compute_dtype": "float32",
    }
    out = capsys.readouterr().out
    assert "model compute dtype float32" in out
    report = last_json_line(out)
    assert report["ratio_to_matmul"] == 0.1


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--configs=mnist99"], "unknown"),
        (["--batch_sizes=eight"], "must be integers"),
        (["--batch_sizes=0"], "must be positive"),
        (["--quick", "--configs=mnist28"], "--quick runs its own"),
        (["--quick", "--batch_sizes=8"], "--quick runs its own"),
        (["--repeats=0"], "--repeats must be >= 1"),
        (["--matmul_n=-2"], "--matmul_n >= 0"),
        (["--out_json=/no/such/folder/b.json"], "no folder /no/such/folder"),
        (["--out_md=/no/such/folder/b.md"], "no folder /no/such/folder"),
    ],
)
def test_bad_arguments_are_usage_errors(argv, match, monkeypatch):
    # Refused before anything is timed.
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("benchmark ran"))
    with pytest.raises(app.UsageError, match=match):
        run_main(argv)


def test_bench_config_sets_and_checks_the_compute_dtype():
    config, side = bench.bench_config("translated60", compute_dtype="bfloat16")
    assert (config.compute_dtype, side, config.glimpse_scales) == ("bfloat16", 60, 3)
    assert bench.bench_config("mnist28")[0].compute_dtype == "float32"
    with pytest.raises(ValueError, match="compute_dtype"):
        bench.bench_config("mnist28", compute_dtype="float16")


def test_the_timed_span_is_the_step_training_runs(monkeypatch):
    # Every training option of the config reaches the step the bench times (as in
    # train_and_evaluate, through train.make_train_chunk_for), at the span's batch size, on the
    # bench's canvases (already framed by the training margin, not generated).
    from ram_jax import train

    class Built(Exception):
        pass

    seen = {}

    def recording(*args, **kwargs):
        seen.update(kwargs)
        raise Built

    monkeypatch.setattr(train, "make_train_chunk", recording)
    config, image_size = bench.bench_config("cluttered100")
    config.update(
        patch_hidden=8,
        location_hidden=8,
        glimpse_features=16,
        core_hidden=16,
        intermediate_classification_weight=0.3,
        temporal_ensemble_weight=1.0,
        mean_episode_fraction=0.25,
        train_rotation=10.0,
    )
    with pytest.raises(Built):
        bench._train_span(config, image_size, batch_size=8, num_steps=2)
    assert seen["batch_size"] == 8 and seen["num_steps"] == seen["steps_per_epoch"] == 2
    assert seen["task"] is None
    assert seen["image_margin"] == train.training_image_margin(
        config, train.get_task("cluttered100")
    )
    assert seen["image_margin"] > 0
    assert seen["intermediate_classification_weight"] == 0.3
    assert seen["temporal_ensemble_weight"] == 1.0
    assert seen["num_mean_episodes"] == 2
    assert seen["max_rotation_deg"] == 10.0
