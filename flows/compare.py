"""Compare two MLflow runs: the params that differ, metrics side by side with deltas, and the
lineage tags that differ (commit, data hash, dvc.lock stage hashes, output md5s, library versions).

  python -m flows.compare word2vec@champion word2vec@challenger
  python -m flows.compare 0123abcd... fcn-voc@2 [--all]

A and B are MLflow run ids or MODEL@ALIAS / MODEL@VERSION (resolved as `flows.reproduce` does).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from mlflow.entities import Run

from flows.reproduce import cell, resolve_run
from tasks.cli import quiet_environment, setup_logging
from tasks.errors import D2lflowError
from tasks.params import load_params
from tasks.tracking import TAG

SYSTEM_METRICS = "system/"  # sampled during training: resource use, not results


def differing(a: dict[str, Any], b: dict[str, Any], show_all: bool = False) -> list[tuple[str, Any, Any]]:
    """(key, A's value, B's value) for every key whose values differ (or every key with `show_all`);
    a key missing on one side shows None there."""
    return [(key, a.get(key), b.get(key)) for key in sorted(set(a) | set(b))
            if show_all or a.get(key) != b.get(key)]


def metric_rows(a: dict[str, float], b: dict[str, float]) -> list[tuple[str, float | None, float | None, float | None]]:
    """(metric, A, B, B - A) for the result metrics of both runs (system metrics left out)."""
    rows = []
    for key in sorted(set(a) | set(b)):
        if key.startswith(SYSTEM_METRICS):
            continue
        va, vb = a.get(key), b.get(key)
        delta = vb - va if va is not None and vb is not None and math.isfinite(va) and math.isfinite(vb) else None
        rows.append((key, va, vb, delta))
    return rows


def lineage(run: Run) -> dict[str, str]:
    return {key[len(TAG):]: value for key, value in run.data.tags.items() if key.startswith(TAG)}


def render(title: str, headers: list[str], rows: list[tuple]) -> str:
    lines = [[title, *headers]] + [[cell(value) for value in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(entry.ljust(width) for entry, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def compare(a: Run, b: Run, show_all: bool = False) -> str:
    """The report: run identities, then params, metrics and lineage tables."""
    names = [f"{'AB'[i]}: run {run.info.run_id} ({run.info.run_name}, experiment {run.info.experiment_id})"
             for i, run in enumerate((a, b))]
    params = differing(a.data.params, b.data.params, show_all)
    equal = len(set(a.data.params) | set(b.data.params)) - len(differing(a.data.params, b.data.params))
    tags = differing(lineage(a), lineage(b), show_all)
    return "\n".join([
        *names,
        "",
        render(f"param ({equal} equal{'' if show_all else ', not shown'})", ["A", "B"], params)
        if params else f"params: all {equal} equal",
        "",
        render("metric", ["A", "B", "B - A"], metric_rows(a.data.metrics, b.data.metrics)),
        "",
        render("lineage tag (d2lflow.*)", ["A", "B"], tags) if tags else "lineage tags: all equal",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="run id, MODEL@ALIAS or MODEL@VERSION")
    parser.add_argument("b", help="run id, MODEL@ALIAS or MODEL@VERSION")
    parser.add_argument("--all", action="store_true", help="also list the params and tags that are equal")
    parser.add_argument("--root", default=".", help="repository root (its params name the MLflow store)")
    args = parser.parse_args(argv)
    quiet_environment()
    setup_logging()
    try:
        params = load_params(Path(args.root).resolve() / "params.yaml")
        text = compare(resolve_run(args.a, params), resolve_run(args.b, params), args.all)
    except D2lflowError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
