"""Collects training results into one markdown table, beside the paper's numbers.

    python -m experiments.report --runs=checkpoints/mnist28,runs/sweep [--out=results.md]
    python -m experiments.report --runs='runs/cluttered60_*' --out=docs/cluttered60.md

Each entry of ``--runs`` is a workdir holding ``results.json``, a ``results.json`` file itself, a
folder whose subfolders (at any depth) hold ``results.json`` files, or a glob pattern over any of
these (quote it so the shell leaves it alone). Paths may also be given as positional arguments.

Per-seed runs (one per workdir, or one per entry of a workdir's ``runs`` list when it trained
several seeds at once) are grouped into one row per configuration: runs whose configs are equal
apart from ``SEED_FIELDS`` share a row. Fields a saved config lacks take their current defaults
(``ram_jax.config.default_config``; new fields default to the earlier behaviour), with ``model``
``"ram"`` and ``policy`` ``"learned"``. A row shows mean ± sample std (ddof=1) across its seeds,
the paper's errors for the same row (``ram_jax.paper``), the training time summed over its
workdirs, and the devices and commits involved.
"""

from __future__ import annotations

import glob
import json
import math
import re
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from absl import app, flags, logging

from ram_jax.config import default_config
from ram_jax.paper import TASK_ORDER, paper_numbers, row_label

__all__ = [
    "SEED_FIELDS",
    "ReportError",
    "Row",
    "build_table",
    "find_results",
    "format_duration",
    "group_rows",
    "load_runs",
    "seed_runs",
]

# Config fields that do not make a different configuration: seeds, where or how fast the data
# is read and evaluated, and how often checkpoints are written.
SEED_FIELDS = frozenset(
    {
        "seed",
        "num_seeds",
        "data_dir",
        "tfds_data_dir",
        "data_backend",
        "eval_batch_size",
        "steps_per_dispatch",
        "mc_samples",
        "checkpoint_every_s",
    }
)
# Defaults for fields older results lack and ``default_config`` may not (yet) define.
_FALLBACK_DEFAULTS: dict[str, Any] = {"model": "ram", "policy": "learned"}
PATH_KEY = "results_path"  # added by ``load_runs``: the results.json a result came from
MISSING = "—"
_METRICS = ("val_error_pct", "val_error_mc_pct", "test_error_pct", "test_error_mc_pct")


class ReportError(Exception):
    """A path holds no results, or a results file cannot be read."""


def _results_at(path: Path) -> list[Path]:
    """The results.json files at ``path``: the file itself, the workdir's, or any below it."""
    if path.is_file():
        return [path] if path.suffix == ".json" else []
    if (path / "results.json").is_file():
        return [path / "results.json"]
    if path.is_dir():
        return sorted(p for p in path.rglob("results.json") if p.is_file())
    return []


def find_results(paths: Iterable[str]) -> list[Path]:
    """Expands workdirs, folders of workdirs, results files and glob patterns to results files.

    Raises ``ReportError`` naming a path that does not exist or holds no results.json, or a
    pattern that matches none. A file reached twice is listed once.
    """
    found: list[Path] = []
    for entry in paths:
        entry = entry.strip()
        if not entry:
            continue
        expanded = str(Path(entry).expanduser())
        if any(c in expanded for c in "*?["):
            matches = sorted(glob.glob(expanded, recursive=True))
            # A pattern such as 'runs/**' also matches each workdir's config.json: of the files
            # it names, only results files count.
            kept = [Path(m) for m in matches if Path(m).is_dir() or Path(m).name == "results.json"]
            files = [f for m in kept for f in _results_at(m)]
            if not files:
                what = "matches nothing" if not matches else "matches no results.json"
                raise ReportError(f"pattern {entry!r} {what}")
        else:
            path = Path(expanded)
            if not path.exists():
                raise ReportError(f"{entry}: no such file or directory")
            files = _results_at(path)
            if not files:
                raise ReportError(f"{entry}: no results.json in it or in any folder below it")
        found.extend(files)
    unique: dict[Path, Path] = {}
    for f in found:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def load_runs(paths: Iterable[str]) -> list[dict[str, Any]]:
    """The content of every results.json reached from ``paths`` (see ``find_results``).

    One dict per file, in the order found, with ``PATH_KEY`` added (the file's path). Raises
    ``ReportError`` naming a file that is not valid JSON or lacks a ``config`` object.
    """
    results = []
    for path in find_results(paths):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ReportError(f"{path}: cannot read results: {e}") from e
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ReportError(f"{path}: not a results file (no 'config' object)")
        results.append({**data, PATH_KEY: str(path)})
    return results


def seed_runs(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-seed runs of one results file: its ``runs`` list, else the top-level fields."""
    entries = result.get("runs")
    if not isinstance(entries, list) or not entries:
        entries = [result]
    return [{"seed": e.get("seed"), **{m: e.get(m) for m in _METRICS}} for e in entries]


def _normalized_config(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result's config with defaults for fields it lacks and nulls for model and policy."""
    saved = dict(result["config"])
    for name in ("task", "num_glimpses"):
        if saved.get(name) is None and result.get(name) is not None:
            saved[name] = result[name]
    config = {**_FALLBACK_DEFAULTS, **default_config().to_dict(), **saved}
    for name, value in _FALLBACK_DEFAULTS.items():
        if config[name] is None:
            config[name] = value
    return config


@dataclass
class Row:
    """One configuration: its label, config (without seed fields) and the runs that share it."""

    task: str
    base_label: str  # the paper-table label (``row_label``): the key to the paper's numbers
    config: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)  # one per results file
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per seed
    label: str = ""  # ``model_label``, plus the fields that tell it apart from same-label rows

    @property
    def model_label(self) -> str:
        """``base_label``, naming a RAM's departures from the paper's model: a core other than
        the ReLU RNN, glimpses kept inside the central part of the canvas, REINFORCE reaching
        the core (with its weight where that is not 1), the deterministic episode's
        cross-entropy added to the loss (likewise); for any model, training digits turned and
        scaled. A REINFORCE term detached from the core, this library's default, goes unnamed."""
        changes = []
        if rotation := self.config.get("train_rotation") or 0:
            changes.append(f"turned ±{rotation:g}°")
        if scale := self.config.get("train_scale") or 0:
            changes.append(f"scaled ±{scale:g}")
        augment = ["training digits " + " and ".join(changes)] if changes else []
        if self.config.get("model") != "ram":
            return f"{self.base_label} ({augment[0]})" if augment else self.base_label
        notes = []
        core = self.config.get("core") or "rnn"
        if core != "rnn":
            notes.append(f"{core.upper()} core")
        location_range = self.config.get("location_range")
        if location_range is not None and location_range != 1:
            notes.append(f"glimpses within ±{location_range:g}")
        weight = self.config.get("reinforce_weight", 1.0)
        if self.config.get("reinforce_through_core") and self.config.get("policy") != "random":
            through = "REINFORCE into the core"
            notes.append(through if weight == 1 else f"{through}, weight {weight:g}")
        mean_weight = self.config.get("mean_rollout_weight") or 0
        if mean_weight > 0 and self.config.get("policy") != "random":
            extra = "deterministic episode's cross-entropy"
            notes.append(extra if mean_weight == 1 else f"{extra}, weight {mean_weight:g}")
        notes += augment
        return f"{self.base_label} ({', '.join(notes)})" if notes else self.base_label


def _natural_key(text: str) -> list[Any]:
    """Sort key putting "RAM 2 glimpses" before "RAM 10 glimpses"."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def _task_key(task: str) -> tuple[int, str]:
    return (TASK_ORDER.index(task), "") if task in TASK_ORDER else (len(TASK_ORDER), task)


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def group_rows(results: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Groups per-seed runs by configuration; rows sorted by task (paper order), then label.

    A RAM whose core is not the paper's RNN says so (``"RAM 8 glimpses (LSTM core)"``), and so
    does one whose glimpses are kept inside the canvas's centre (``"RAM 6 glimpses (glimpses
    within ±0.4)"``) and one whose REINFORCE term trains the core (``"RAM 8 glimpses (LSTM core,
    REINFORCE into the core, weight 0.1)"``); its paper numbers are still the row's. Rows of one
    task that share a label but differ in config get the differing fields appended, e.g.
    ``"RAM 6 glimpses (learning_rate=0.003)"``.
    """
    rows: dict[str, Row] = {}
    for result in results:
        config = _normalized_config(result)
        try:
            base_label = row_label(config)
        except ValueError as e:
            raise ReportError(f"{result.get(PATH_KEY, '<results>')}: {e}") from e
        key_config = {k: v for k, v in config.items() if k not in SEED_FIELDS}
        key = json.dumps(key_config, sort_keys=True, default=str)
        row = rows.setdefault(key, Row(str(config["task"]), base_label, key_config))
        row.results.append(dict(result))
        row.runs.extend(seed_runs(result))

    by_label: dict[tuple[str, str], list[Row]] = {}
    for row in rows.values():
        by_label.setdefault((row.task, row.model_label), []).append(row)
    for same in by_label.values():
        if len(same) == 1:
            same[0].label = same[0].model_label
            continue
        names = sorted(set().union(*(r.config for r in same)))
        differing = [n for n in names if len({_value_text(r.config.get(n)) for r in same}) > 1]
        for r in same:
            detail = ", ".join(f"{n}={_value_text(r.config.get(n))}" for n in differing)
            r.label = f"{r.model_label} ({detail})"

    for row in rows.values():
        seeds = [run["seed"] for run in row.runs if run["seed"] is not None]
        if len(set(seeds)) < len(seeds):
            logging.warning(
                "%s %s: some seeds appear more than once: %s", row.task, row.label, seeds
            )
    return sorted(rows.values(), key=lambda r: (_task_key(r.task), _natural_key(r.label)))


def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def _mean_std(values: Sequence[Any], n: int, with_std: bool = True) -> str:
    """``"mean ± std"`` (ddof=1) over the values present; ``(n=k)`` when only k of n are."""
    present = _finite(values)
    if not present:
        return MISSING
    text = f"{statistics.mean(present):.2f}"
    if with_std and len(present) > 1:
        text += f" ± {statistics.stdev(present):.2f}"
    if len(present) < n:
        text += f" (n={len(present)})"
    return text


def _number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def format_duration(seconds: float | None) -> str:
    """Human-readable duration: ``"45 s"``, ``"12 min"``, ``"3.2 h"``; ``"—"`` for None."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _short_commit(commit: str) -> str:
    return re.sub(r"^([0-9a-f]{7})[0-9a-f]{33}", r"\1", commit)


def _distinct(values: Iterable[Any]) -> list[str]:
    return list(dict.fromkeys(str(v) for v in values if v not in (None, "")))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _mc_samples(row: Row) -> list[str]:
    values = [r.get("mc_samples", r["config"].get("mc_samples")) for r in row.results]
    return _distinct(values)


def build_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The markdown table (one row per configuration, see ``group_rows``) and a short legend.

    ``results`` are loaded results files (``load_runs``). Columns: task, model (row label),
    seeds (n), val % (mean deterministic validation error, used for model selection), test %
    (one deterministic rollout) and test % MC (class probabilities averaged over M sampled
    rollouts) as mean ± std across seeds, the paper's arXiv v1 and NIPS errors, training time
    summed over the row's workdirs, devices, and short commits. Missing values read "—".
    """
    rows = group_rows(results)
    all_m = sorted({m for row in rows for m in _mc_samples(row)}, key=_natural_key)
    mc_header = f"test % MC (M={all_m[0]})" if len(all_m) == 1 else "test % MC"
    header = [
        "task",
        "model",
        "seeds",
        "val %",
        "test %",
        mc_header,
        "paper arXiv v1",
        "paper NIPS",
        "train time",
        "device",
        "commit",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        n = len(row.runs)
        mc = _mean_std([r["test_error_mc_pct"] for r in row.runs], n)
        if len(all_m) > 1 and mc != MISSING:
            mc += f" (M={','.join(_mc_samples(row)) or '?'})"
        arxiv, nips = paper_numbers(row.task, row.base_label)
        seconds = _finite(r.get("train_seconds") for r in row.results)
        cells = [
            row.task,
            row.label,
            str(n),
            _mean_std([r["val_error_pct"] for r in row.runs], n, with_std=False),
            _mean_std([r["test_error_pct"] for r in row.runs], n),
            mc,
            _number(arxiv),
            _number(nips),
            format_duration(sum(seconds) if seconds else None),
            ", ".join(_distinct(r.get("device") for r in row.results)) or MISSING,
            ", ".join(
                _distinct(_short_commit(str(r["commit"])) for r in row.results if r.get("commit"))
            )
            or MISSING,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        "Test errors in %, mean ± sample std (ddof=1) across seeds. test %: one deterministic "
        "rollout (the policy mean); test % MC: class probabilities averaged over M sampled "
        "rollouts; val %: mean deterministic validation error (the model-selection criterion). "
        "Paper: Mnih et al. 2014, arXiv v1 and NIPS camera-ready. Train time: summed over the "
        "row's workdirs.",
    ]
    return "\n".join(lines) + "\n"


_RUNS = flags.DEFINE_list(
    "runs",
    None,
    "Comma-separated workdirs, results.json files, folders of workdirs, or glob patterns.",
)
_OUT = flags.DEFINE_string("out", None, "Also write the markdown table to this file.")


def main(argv: list[str]) -> None:
    paths = list(_RUNS.value or []) + list(argv[1:])
    if not paths:
        raise app.UsageError("give --runs=DIR[,DIR...] (or paths as arguments)")
    try:
        table = build_table(load_runs(paths))
    except ReportError as e:
        sys.exit(f"report: error: {e}")
    print(table, end="", flush=True)
    if _OUT.value:
        out = Path(_OUT.value)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)


if __name__ == "__main__":
    app.run(main)
