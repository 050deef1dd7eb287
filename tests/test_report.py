"""Tests for the paper's numbers (``ram_jax.paper``) and the results table (``report``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import report
from ram_jax import paper

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def write_result(
    workdir: Path,
    *,
    task: str = "mnist28",
    seed: int = 0,
    test: float | None = 1.0,
    test_mc: float | None = 0.9,
    val: float | None = 1.1,
    runs: list[dict[str, Any]] | None = None,
    train_seconds: float | None = 600.0,
    device: str = "cpu: x86_64 (2 cores) x1",
    commit: str = "0123456789abcdef0123456789abcdef01234567",
    mc_samples: int = 10,
    **config_fields: Any,
) -> Path:
    """Writes a results.json in ``workdir`` the way training does; returns the workdir."""
    config = {
        "task": task,
        "num_glimpses": 6,
        "seed": seed,
        "learning_rate": 0.001,
        "mc_samples": mc_samples,
        **config_fields,
    }
    data: dict[str, Any] = {
        "task": task,
        "num_glimpses": config["num_glimpses"],
        "seed": seed,
        "val_error_pct": val,
        "val_error_mc_pct": val,
        "test_error_pct": test,
        "test_error_mc_pct": test_mc,
        "mc_samples": mc_samples,
        "train_seconds": train_seconds,
        "device": device,
        "commit": commit,
        "config": config,
    }
    if runs is not None:
        data["runs"] = runs
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(data))
    return workdir


def parse_table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the body rows (as header -> cell) of the markdown table in ``text``."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]
    header, separator, body = split[0], split[1], split[2:]
    assert set("".join(separator)) <= {"-", "|"}
    for cells in body:
        assert len(cells) == len(header), cells
    return header, [dict(zip(header, cells, strict=True)) for cells in body]


def rows_of(paths: list[Path | str]) -> tuple[list[str], list[dict[str, str]]]:
    return parse_table(report.build_table(report.load_runs([str(p) for p in paths])))


def error_cells_by_model(paths: list[Path | str]) -> dict[str, str]:
    """The table's test-error cell of each row, by its model label."""
    return {r["model"]: r["test %"] for r in rows_of(paths)[1]}


def mean_std(cell: str) -> tuple[float, float | None]:
    mean, _, std = cell.partition(" ± ")
    return float(mean), (float(std) if std else None)


# --------------------------------------------------------------------------- ram_jax.paper


def test_paper_results_hold_every_reference_number() -> None:
    per_task = {t: sum(k[0] == t for k in paper.PAPER_RESULTS) for t in paper.TASK_ORDER}
    assert per_task == {"mnist28": 9, "translated60": 6, "cluttered60": 7, "cluttered100": 5}
    # A few from each table, both columns.
    assert paper.PAPER_RESULTS[("mnist28", "RAM 1 random glimpse")] == (42.85, None)
    assert paper.PAPER_RESULTS[("mnist28", "RAM 7 glimpses")] == (1.47, 1.07)
    assert paper.PAPER_RESULTS[("translated60", "FC 64")] == (7.56, 6.42)
    assert paper.PAPER_RESULTS[("translated60", "RAM 8 glimpses")] == (1.84, 1.20)
    assert paper.PAPER_RESULTS[("cluttered60", "Conv")] == (7.83, 8.09)
    assert paper.PAPER_RESULTS[("cluttered100", "RAM 8 random glimpses")] == (42.25, 28.4)
    assert paper.PAPER_RESULTS[("cluttered100", "Conv")] == (16.51, 14.35)
    # Every row has at least one number, each a plausible percentage.
    for (task, row), (arxiv, nips) in paper.PAPER_RESULTS.items():
        assert task in paper.TASK_ORDER
        assert arxiv is not None or nips is not None, (task, row)
        for v in (arxiv, nips):
            assert v is None or 0 < v < 50


def test_row_label_defaults_and_models() -> None:
    assert paper.row_label({"num_glimpses": 6}) == "RAM 6 glimpses"
    assert paper.row_label({"num_glimpses": 6, "model": None, "policy": None}) == "RAM 6 glimpses"
    assert paper.row_label({"model": "ram", "policy": "random", "num_glimpses": 1}) == (
        "RAM 1 random glimpse"
    )
    assert paper.row_label({"model": "ram", "num_glimpses": 1}) == "RAM 1 glimpse"
    assert paper.row_label({"model": "fc", "fc_hidden": 64, "num_glimpses": 6}) == "FC 64"
    assert paper.row_label({"model": "conv", "num_glimpses": 6}) == "Conv"
    with pytest.raises(ValueError, match="unknown model"):
        paper.row_label({"model": "mlp", "num_glimpses": 6})
    with pytest.raises(ValueError, match="unknown policy"):
        paper.row_label({"policy": "greedy", "num_glimpses": 6})
    with pytest.raises(ValueError, match="fc_hidden"):
        paper.row_label({"model": "fc"})


def test_paper_numbers_lookup() -> None:
    assert paper.paper_numbers("mnist28", paper.row_label({"model": "fc", "fc_hidden": 256})) == (
        1.35,
        1.69,
    )
    assert paper.paper_numbers("mnist28", "Conv") == (None, 1.21)
    assert paper.paper_numbers("mnist28", "RAM 8 glimpses") == (None, None)
    assert paper.paper_numbers("cluttered100", "FC 256") == (None, None)
    assert paper.paper_numbers("catch", "RAM 6 glimpses") == (None, None)


# --------------------------------------------------------------------------- the table


def test_seeds_from_two_workdirs_merge_into_one_row(tmp_path: Path) -> None:
    # Old-style file (no model/policy in its config) and a new-style one of the same run
    # with a different seed and bookkeeping fields: one row, n = 2.
    a = write_result(
        tmp_path / "a", seed=0, test=1.0, test_mc=0.8, val=1.2, train_seconds=600.0,
        device="cpu: x86_64 (2 cores) x1", commit="a" * 40,
    )  # fmt: skip
    b = write_result(
        tmp_path / "b", seed=1, test=1.5, test_mc=1.2, val=1.6, train_seconds=1200.0,
        device="gpu: NVIDIA H100 x1", commit="b" * 40, model="ram", policy="learned",
        data_dir="/elsewhere", eval_batch_size=500, steps_per_dispatch=7,
        checkpoint_every_s=30.0,
    )  # fmt: skip
    header, rows = rows_of([a, b])
    assert header == [
        "task", "model", "seeds", "val %", "test %", "test % MC (M=10)", "paper arXiv v1",
        "paper NIPS", "train time", "device", "commit",
    ]  # fmt: skip
    assert len(rows) == 1
    row = rows[0]
    assert (row["task"], row["model"], row["seeds"]) == ("mnist28", "RAM 6 glimpses", "2")
    # mean(1.0, 1.5) = 1.25; std (ddof=1) = sqrt(2 * 0.25**2 / 1) = 0.3536.
    assert row["test %"] == "1.25 ± 0.35"
    # mean(0.8, 1.2) = 1.00; std = sqrt(2 * 0.2**2) = 0.2828.
    assert row["test % MC (M=10)"] == "1.00 ± 0.28"
    assert row["val %"] == "1.40"  # mean only
    assert (row["paper arXiv v1"], row["paper NIPS"]) == ("1.29", "1.12")
    assert row["train time"] == "30 min"  # 600 s + 1200 s
    assert row["device"] == "cpu: x86_64 (2 cores) x1, gpu: NVIDIA H100 x1"
    assert row["commit"] == "aaaaaaa, bbbbbbb"


def test_multi_seed_workdir_uses_its_runs_list(tmp_path: Path) -> None:
    runs = [
        {"seed": s, "best_epoch": 10, "val_error_pct": v, "val_error_mc_pct": v,
         "test_error_pct": t, "test_error_mc_pct": m}
        for s, v, t, m in [(0, 4.0, 5.0, 4.5), (1, 5.0, 6.0, 4.5), (2, 6.0, 7.0, 4.5)]
    ]  # fmt: skip
    # Top-level fields are those of some other summary; the runs list must win.
    w = write_result(
        tmp_path / "multi", task="cluttered60", num_glimpses=8, glimpse_size=12,
        glimpse_scales=3, num_seeds=3, test=99.0, test_mc=99.0, val=99.0, runs=runs,
        train_seconds=7200.0,
    )  # fmt: skip
    _, rows = rows_of([w])
    assert len(rows) == 1
    row = rows[0]
    assert (row["task"], row["model"], row["seeds"]) == ("cluttered60", "RAM 8 glimpses", "3")
    assert row["test %"] == "6.00 ± 1.00"
    assert row["test % MC (M=10)"] == "4.50 ± 0.00"
    assert row["val %"] == "5.00"
    assert (row["paper arXiv v1"], row["paper NIPS"]) == ("5.23", "4.04")
    assert row["train time"] == "2.0 h"  # counted once for the workdir, not per seed


def test_baselines_and_random_policy_rows(tmp_path: Path) -> None:
    fc = write_result(tmp_path / "fc", model="fc", fc_hidden=256, test=1.5)
    conv = write_result(tmp_path / "conv", task="translated60", model="conv", test=2.0)
    rnd = write_result(
        tmp_path / "rnd", task="cluttered60", model="ram", policy="random", num_glimpses=8,
        test=15.0,
    )  # fmt: skip
    _, rows = rows_of([rnd, conv, fc])
    got = {
        (r["task"], r["model"]): (r["paper arXiv v1"], r["paper NIPS"], r["test %"]) for r in rows
    }
    assert got == {
        ("mnist28", "FC 256"): ("1.35", "1.69", "1.50"),
        ("translated60", "Conv"): ("2.31", "1.62", "2.00"),
        ("cluttered60", "RAM 8 random glimpses"): ("—", "14.40", "15.00"),
    }
    # Sorted by task in the paper's order regardless of input order.
    assert [r["task"] for r in rows] == ["mnist28", "translated60", "cluttered60"]


def test_row_order_within_a_task_is_natural(tmp_path: Path) -> None:
    paths = [
        write_result(tmp_path / "g10", num_glimpses=10),
        write_result(tmp_path / "g2", num_glimpses=2),
        write_result(tmp_path / "r1", num_glimpses=1, policy="random"),
        write_result(tmp_path / "fc64", model="fc", fc_hidden=64),
        write_result(tmp_path / "fc256", model="fc", fc_hidden=256),
        write_result(tmp_path / "c100", task="cluttered100", num_glimpses=4),
        write_result(tmp_path / "other", task="zzz_task", num_glimpses=4),
    ]
    _, rows = rows_of(paths)
    assert [(r["task"], r["model"]) for r in rows] == [
        ("mnist28", "FC 64"),
        ("mnist28", "FC 256"),
        ("mnist28", "RAM 1 random glimpse"),
        ("mnist28", "RAM 2 glimpses"),
        ("mnist28", "RAM 10 glimpses"),
        ("cluttered100", "RAM 4 glimpses"),
        ("zzz_task", "RAM 4 glimpses"),
    ]
    by_model = {(r["task"], r["model"]): r for r in rows}
    assert by_model[("mnist28", "RAM 10 glimpses")]["paper NIPS"] == "—"
    assert by_model[("mnist28", "RAM 1 random glimpse")]["paper arXiv v1"] == "42.85"
    assert by_model[("cluttered100", "RAM 4 glimpses")]["paper NIPS"] == "9.41"


def test_same_label_different_configs_stay_apart(tmp_path: Path) -> None:
    paths = [
        write_result(tmp_path / "lr1_s0", seed=0, learning_rate=0.001, test=1.0),
        write_result(tmp_path / "lr1_s1", seed=1, learning_rate=0.001, test=2.0),
        write_result(tmp_path / "lr3", seed=0, learning_rate=0.003, test=3.0),
    ]
    _, rows = rows_of(paths)
    got = {r["model"]: (r["seeds"], r["test %"], r["paper arXiv v1"]) for r in rows}
    assert got == {
        "RAM 6 glimpses (learning_rate=0.001)": ("2", "1.50 ± 0.71", "1.29"),
        "RAM 6 glimpses (learning_rate=0.003)": ("1", "3.00", "1.29"),
    }


def test_a_core_other_than_the_papers_is_named_and_keeps_the_paper_numbers(
    tmp_path: Path,
) -> None:
    paths = [
        write_result(tmp_path / "rnn", task="translated60", num_glimpses=8, core="rnn", test=2.0),
        write_result(tmp_path / "lstm", task="translated60", num_glimpses=8, core="lstm", test=1.0),
        write_result(tmp_path / "fc", task="translated60", model="fc", fc_hidden=64, core="lstm"),
    ]
    _, rows = rows_of(paths)
    got = {r["model"]: (r["test %"], r["paper arXiv v1"], r["paper NIPS"]) for r in rows}
    assert got == {
        "RAM 8 glimpses": ("2.00", "1.84", "1.20"),
        "RAM 8 glimpses (LSTM core)": ("1.00", "1.84", "1.20"),
        # The core field means nothing to a baseline: no suffix.
        "FC 64": ("1.00", "7.56", "6.42"),
    }


def test_a_location_range_is_named_and_keeps_the_paper_numbers(tmp_path: Path) -> None:
    paths = [
        write_result(tmp_path / "full", location_range=1.0, test=2.0),
        write_result(tmp_path / "centre", location_range=0.4, test=1.0),
        write_result(tmp_path / "both", task="translated60", num_glimpses=8, core="lstm",
                     location_range=0.5, test=3.0),
        write_result(tmp_path / "fc", model="fc", fc_hidden=256, location_range=0.4, test=4.0),
    ]  # fmt: skip
    _, rows = rows_of(paths)
    got = {r["model"]: (r["test %"], r["paper arXiv v1"], r["paper NIPS"]) for r in rows}
    assert got == {
        "RAM 6 glimpses": ("2.00", "1.29", "1.12"),
        "RAM 6 glimpses (glimpses within ±0.4)": ("1.00", "1.29", "1.12"),
        "RAM 8 glimpses (LSTM core, glimpses within ±0.5)": ("3.00", "1.84", "1.20"),
        "FC 256": ("4.00", "1.35", "1.69"),
    }


def test_reinforce_into_the_core_is_named_with_its_weight(tmp_path: Path) -> None:
    row = dict(task="cluttered100", num_glimpses=8, core="lstm")
    paths = [
        write_result(tmp_path / "detached", **row, reinforce_through_core=False, test=2.0),
        write_result(tmp_path / "w01", **row, reinforce_through_core=True, reinforce_weight=0.1,
                     test=1.0),
        write_result(tmp_path / "w1", **row, reinforce_through_core=True, reinforce_weight=1.0,
                     test=3.0),
        # Random glimpses score no decisions: nothing reaches the core, nothing to name.
        write_result(tmp_path / "random", **row, policy="random", reinforce_through_core=True,
                     test=4.0),
    ]  # fmt: skip
    _, rows = rows_of(paths)
    got = {r["model"]: (r["test %"], r["paper arXiv v1"], r["paper NIPS"]) for r in rows}
    assert got == {
        "RAM 8 glimpses (LSTM core)": ("2.00", "10.83", "8.11"),
        "RAM 8 glimpses (LSTM core, REINFORCE into the core, weight 0.1)": (
            "1.00",
            "10.83",
            "8.11",
        ),
        "RAM 8 glimpses (LSTM core, REINFORCE into the core)": ("3.00", "10.83", "8.11"),
        "RAM 8 random glimpses (LSTM core)": ("4.00", "42.25", "28.40"),
    }


def test_the_deterministic_episodes_cross_entropy_is_named_with_its_weight(
    tmp_path: Path,
) -> None:
    row = dict(task="cluttered60", num_glimpses=8, core="lstm")
    paths = [
        write_result(tmp_path / "none", **row, mean_rollout_weight=0.0, test=3.0),
        write_result(tmp_path / "w1", **row, mean_rollout_weight=1.0, test=2.0),
        write_result(tmp_path / "w05", **row, mean_rollout_weight=0.5, test=1.0),
        # A random-glimpse row has no deterministic episode (its "mean" episode draws random
        # glimpses too), so the term is not named there.
        write_result(tmp_path / "random", **row, policy="random", mean_rollout_weight=1.0,
                     test=4.0),
    ]  # fmt: skip
    assert error_cells_by_model(paths) == {
        "RAM 8 glimpses (LSTM core)": "3.00",
        "RAM 8 glimpses (LSTM core, deterministic episode's cross-entropy)": "2.00",
        "RAM 8 glimpses (LSTM core, deterministic episode's cross-entropy, weight 0.5)": "1.00",
        "RAM 8 random glimpses (LSTM core)": "4.00",
    }


def test_turned_and_scaled_training_digits_are_named_for_every_model(tmp_path: Path) -> None:
    paths = [
        write_result(tmp_path / "plain", task="translated60", num_glimpses=8, test=3.0),
        write_result(tmp_path / "ram", task="translated60", num_glimpses=8, train_rotation=10.0,
                     train_scale=0.1, test=2.0),
        write_result(tmp_path / "conv", task="translated60", model="conv", train_rotation=15.0,
                     train_scale=0.0, test=1.0),
    ]  # fmt: skip
    assert error_cells_by_model(paths) == {
        "RAM 8 glimpses": "3.00",
        "RAM 8 glimpses (training digits turned ±10° and scaled ±0.1)": "2.00",
        "Conv (training digits turned ±15°)": "1.00",
    }


def test_missing_values_and_mixed_mc_samples(tmp_path: Path) -> None:
    paths = [
        write_result(tmp_path / "a", seed=0, test=2.0, test_mc=None, train_seconds=None,
                     mc_samples=10, commit=""),
        write_result(tmp_path / "b", seed=1, test=4.0, test_mc=3.0, train_seconds=None,
                     mc_samples=20, commit=""),
        write_result(tmp_path / "c", task="translated60", test=None, test_mc=None, val=None,
                     train_seconds=30.0, mc_samples=10),
    ]  # fmt: skip
    header, rows = rows_of(paths)
    assert "test % MC" in header and "test % MC (M=10)" not in header
    a, c = rows
    assert a["test %"] == "3.00 ± 1.41"
    assert a["test % MC"] == "3.00 (n=1) (M=10,20)"
    assert a["train time"] == "—"
    assert a["commit"] == "—"
    assert c["test %"] == c["test % MC"] == c["val %"] == "—"
    assert c["train time"] == "30 s"


def test_real_checkpoint_results(tmp_path: Path) -> None:
    results_file = REPO / "checkpoints" / "mnist28" / "results.json"
    saved = json.loads(results_file.read_text())
    _, rows = rows_of([results_file.parent])
    assert len(rows) == 1
    row = rows[0]
    # The shipped model reads its glimpses near the centre (not the paper's model).
    location_range = saved["config"]["location_range"]
    assert location_range < 1
    assert (row["task"], row["seeds"]) == ("mnist28", "1")
    assert row["model"] == f"RAM 6 glimpses (glimpses within ±{location_range:g})"
    assert (row["paper arXiv v1"], row["paper NIPS"]) == ("1.29", "1.12")
    assert row["test %"] == f"{saved['test_error_pct']:.2f}"
    assert row["commit"] == saved["commit"][:7]


# --------------------------------------------------------------------------- paths and errors


def test_paths_expand_to_subdirectories_globs_and_files(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    write_result(sweep / "s0", seed=0, test=1.0)
    write_result(sweep / "nested" / "s1", seed=1, test=2.0)
    (sweep / "logs").mkdir()
    write_result(tmp_path / "other", seed=2, test=3.0)

    found = report.find_results([str(sweep)])
    assert sorted(p.parent.name for p in found) == ["s0", "s1"]
    # A glob; a results.json path; the same workdir twice counts once.
    found = report.find_results(
        [str(tmp_path / "sw*"), str(tmp_path / "other" / "results.json"), str(tmp_path / "other")]
    )
    assert sorted(p.parent.name for p in found) == ["other", "s0", "s1"]
    loaded = report.load_runs([str(tmp_path / "sw*")])
    assert {Path(r[report.PATH_KEY]).parent.name for r in loaded} == {"s0", "s1"}
    _, rows = parse_table(report.build_table(loaded))
    assert rows[0]["seeds"] == "2"


def test_a_pattern_that_also_matches_other_files_keeps_only_results(tmp_path: Path) -> None:
    # 'runs/**' names every file of every workdir, config.json among them.
    write_result(tmp_path / "runs" / "s0", seed=0, test=1.0)
    (tmp_path / "runs" / "s0" / "config.json").write_text('{"task": "mnist28"}')
    (tmp_path / "runs" / "notes.json").write_text("[]")
    found = report.find_results([str(tmp_path / "runs" / "**")])
    assert found == [tmp_path / "runs" / "s0" / "results.json"]
    assert len(report.load_runs([str(tmp_path / "runs" / "**")])) == 1


def test_path_without_results_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(report.ReportError, match=r"empty: no results\.json"):
        report.load_runs([str(empty)])
    with pytest.raises(report.ReportError, match="nowhere: no such file"):
        report.load_runs([str(tmp_path / "nowhere")])
    with pytest.raises(report.ReportError, match="matches nothing"):
        report.load_runs([str(tmp_path / "nothing*")])
    with pytest.raises(report.ReportError, match=r"matches no results\.json"):
        report.load_runs([str(tmp_path / "emp*")])


def test_corrupt_results_name_the_file(tmp_path: Path) -> None:
    write_result(tmp_path / "good")
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir()
    bad.write_text('{"task": "mnist28", "config": {')
    with pytest.raises(report.ReportError, match=r"bad/results\.json: cannot read"):
        report.load_runs([str(tmp_path)])
    bad.write_text("[1, 2]")
    with pytest.raises(report.ReportError, match=r"bad/results\.json: not a results file"):
        report.load_runs([str(tmp_path)])
    # A config the row label cannot be built from also names its file.
    bad.write_text(json.dumps({"config": {"task": "mnist28", "model": "mlp"}}))
    with pytest.raises(report.ReportError, match=r"bad/results\.json: unknown model 'mlp'"):
        report.build_table(report.load_runs([str(tmp_path)]))


def test_format_duration() -> None:
    assert report.format_duration(None) == "—"
    assert report.format_duration(42.4) == "42 s"
    assert report.format_duration(12 * 60 + 10) == "12 min"
    assert report.format_duration(2.5 * 3600) == "2.5 h"


def test_main_prints_and_writes_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_result(tmp_path / "runs" / "a", model="fc", fc_hidden=256, test=1.4)
    out = tmp_path / "report" / "table.md"
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver(runs=[str(tmp_path / "runs")], out=str(out)):
        report.main(["report"])
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    _, rows = parse_table(printed)
    assert [(r["model"], r["test %"], r["paper NIPS"]) for r in rows] == [
        ("FC 256", "1.40", "1.69")
    ]
    with flagsaver.flagsaver(runs=[str(tmp_path / "missing")], out=None):
        with pytest.raises(SystemExit, match="missing: no such file"):
            report.main(["report"])


def test_mean_std_matches_the_statistics_module() -> None:
    # The ddof=1 convention, checked against an independent formula.
    values = [1.0, 2.0, 4.0]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    assert report._mean_std(values, 3) == f"{mean:.2f} ± {std:.2f}"
