"""DVC's plots, drawn without a network: `dvc plots show --json` fills DVC's Vega-Lite templates with
the workspace's data (dvc.yaml's `plots`, top-level and per stage); vl-convert (a bundled Vega engine)
draws each spec as SVG and PNG. The page `d2lflow plots` writes holds the SVGs inline, with no script
(`dvc plots show`'s page loads Vega from a CDN and is blank offline); the train stages log the PNGs
of their own plots, the same figures, to the MLflow run.
"""

from __future__ import annotations

import html
import json
import logging
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.atomic import atomic_path, write_text
from tasks.dvc_repo import stage_environment
from tasks.errors import D2lflowError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figure:
    name: str  # DVC's name of the plot: its id (top-level plots) or its file
    title: str
    spec: dict[str, Any]  # Vega-Lite, data inline


def _dvc_yaml(root: Path) -> dict[str, Any]:
    path = root / "dvc.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def _plot_files(entry: Any) -> list[str]:
    """The data files of one dvc.yaml plot entry (`{file: {...}}`, `{id: {y: {file: [...]}}}` or `file`)."""
    if isinstance(entry, str):
        return [entry]
    files = []
    for key, props in entry.items():
        y = props.get("y") if isinstance(props, dict) else None
        files += list(y) if isinstance(y, dict) else [key]
    return files


def plot_targets(root: Path, pipeline: str | None = None, stage: str | None = None) -> list[str]:
    """The dvc.yaml plot names (files, or ids of top-level plots) of one stage, of the stages of one
    pipeline (`<pipeline>_*`), or all. A top-level plot belongs to the stages whose outputs hold its data."""
    spec = _dvc_yaml(root)
    stages = {name: s for name, s in (spec.get("stages") or {}).items()
              if (stage is None or name == stage) and (pipeline is None or name.startswith(f"{pipeline}_"))}
    owned: list[str] = []
    targets: list[str] = []
    for body in stages.values():
        for kind in ("outs", "plots", "metrics"):
            for entry in body.get(kind) or []:
                owned += _plot_files(entry)
        for entry in body.get("plots") or []:
            targets += _plot_files(entry)
    for entry in spec.get("plots") or []:
        if isinstance(entry, dict):
            for plot_id, props in entry.items():
                files = _plot_files({plot_id: props})
                if any(f == o or f.startswith(o.rstrip("/") + "/") for f in files for o in owned):
                    targets.append(plot_id)
    return list(dict.fromkeys(targets))


def dvc_figures(root: Path, targets: list[str]) -> tuple[list[Figure], list[str]]:
    """The filled specs `dvc plots show --json` gives for `targets` (a folder plot: one per file), and
    one line per plot DVC could not load (its data not produced yet)."""
    if not targets:
        return [], []
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json", *targets], cwd=root,
                          env=stage_environment(), capture_output=True, text=True)
    try:
        shown = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise D2lflowError(f"`dvc plots show --json` failed (exit {done.returncode}) in {root}:\n"
                           f"{(done.stdout + done.stderr).strip()[-3000:]}") from None
    figures = []
    for name, items in (shown.get("data") or {}).items():
        for item in items:
            if item.get("type") == "vega":
                title = item["content"].get("title")
                title = title.get("text", name) if isinstance(title, dict) else (title or name)
                figures.append(Figure(name, str(title), item["content"]))
    missing = [f"{error.get('name')}: {error.get('msg')}" for error in shown.get("errors") or []]
    return figures, missing


def svg(figure: Figure) -> str:
    import vl_convert

    return vl_convert.vegalite_to_svg(figure.spec)


def png(figure: Figure, scale: float = 2.0) -> bytes:
    import vl_convert

    return vl_convert.vegalite_to_png(figure.spec, scale=scale)


def file_stem(name: str) -> str:
    """A plot name as a file name: `artifacts/word2vec/train/history.csv` -> `word2vec_train_history`."""
    stem = re.sub(r"\.(csv|tsv|json|ya?ml)$", "", name.removeprefix("artifacts/"))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "plot"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} figure{{display:inline-block;margin:1em;vertical-align:top}}
figcaption{{font-size:small;color:#555}} .missing{{color:#a00}}</style></head>
<body><h1>{title}</h1>
{missing}
{figures}
</body></html>
"""


def write_page(root: Path, out_dir: Path, pipeline: str | None = None) -> dict[str, Any]:
    """`d2lflow plots [PIPELINE]`: every plot of dvc.yaml (or of one pipeline) as SVG inline in
    `out_dir/index.html` (no script, no network) and as PNG beside it. No plot with data is an error."""
    targets = plot_targets(root, pipeline)
    if not targets:
        where = f"the stages {pipeline}_*" if pipeline else "dvc.yaml"
        raise D2lflowError(f"{root / 'dvc.yaml'}: no plots declared for {where}; add a `plots:` entry to a stage")
    figures, missing = dvc_figures(root, targets)
    if not figures:
        raise D2lflowError(f"no plot has data yet ({'; '.join(missing) or 'dvc plots show returned none'}); "
                           f"run `d2lflow run {pipeline or 'PIPELINE'}` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks, written = [], []
    for i, figure in enumerate(figures):
        stem = f"{i:02d}_{file_stem(figure.name)}"
        with atomic_path(out_dir / f"{stem}.png") as tmp:
            tmp.write_bytes(png(figure))
        written.append(str(out_dir / f"{stem}.png"))
        blocks.append(f'<figure id="{html.escape(stem)}">{svg(figure)}<figcaption>{html.escape(figure.name)} '
                      f'(<a href="{html.escape(stem)}.png">PNG</a>)</figcaption></figure>')
    notes = "".join(f'<p class="missing">not drawn: {html.escape(line)}</p>' for line in missing)
    title = f"d2lflow plots: {pipeline or 'all pipelines'}"
    write_text(out_dir / "index.html", PAGE.format(title=html.escape(title), missing=notes, figures="\n".join(blocks)))
    return {"page": str(out_dir / "index.html"), "figures": [f.name for f in figures], "png": written,
            "not_drawn": missing}


def log_stage_figures(root: Path, stage: str, files: list[Path]) -> list[str]:
    """In the active MLflow run: `files` (the stage's per-epoch CSVs) under `history/`, and the PNGs of
    the stage's dvc.yaml plots under `plots/`. A figure that cannot be drawn is a warning, not a failed
    training run; returns the artifact paths logged."""
    import mlflow

    logged = []
    for path in files:
        mlflow.log_artifact(str(path), "history")
        logged.append(f"history/{path.name}")
    try:
        figures, missing = dvc_figures(root, plot_targets(root, stage=stage))
        for line in missing:
            log.warning("plot not drawn for the MLflow run: %s", line)
        with tempfile.TemporaryDirectory(prefix="d2lflow-plots-") as scratch:
            for figure in figures:
                path = Path(scratch) / f"{file_stem(figure.name)}.png"
                path.write_bytes(png(figure))
                mlflow.log_artifact(str(path), "plots")
                logged.append(f"plots/{path.name}")
    except (D2lflowError, OSError, ValueError) as error:
        log.warning("the figures of %s were not logged to MLflow: %s", stage, error)
    return logged


def write_validation(path: Path, history: list[dict]) -> list[dict]:
    """The epochs that were validated, as `epoch,val_*` rows (a DVC plot; an epoch not validated is
    absent, not a zero). Returns the rows written."""
    rows = [h for h in history if any(k.startswith("val_") and h[k] is not None for k in h)]
    columns = list(dict.fromkeys(k for h in rows for k in h if k.startswith("val_")))
    text = ",".join(["epoch", *columns]) + "\n" + "".join(
        ",".join([str(h["epoch"]), *("" if h.get(c) is None else f"{h[c]:.6f}" for c in columns)]) + "\n"
        for h in rows)
    write_text(path, text)
    return rows
