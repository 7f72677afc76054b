"""`d2lflow sweep`: a 2-point lr grid of tiny synthetic word2vec through DVC's queue with two workers.
Each trial is a DVC experiment and an MLflow run tagged with the sweep; the printed ranking follows the
metrics; the champion alias ends on the best trial; `d2lflow exp show word2vec` shows only word2vec."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import copy_repo, git, run
from tests.test_e2e_lineage import TINY, client_for

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "flows.cli"]


def experiment_names(root: Path) -> set[str]:
    shown = json.loads(run(root, sys.executable, "-m", "dvc", "exp", "show", "--json").stdout)
    return {rev.get("name") for entry in shown for group in entry.get("experiments") or [] for rev in group["revs"]}


def test_a_two_point_sweep_ranks_its_trials_and_promotes_the_best(tmp_path: Path) -> None:
    root = copy_repo(tmp_path / "repo", TINY)
    run(root, *CLI, "acquire")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "tiny data")
    done = subprocess.run([*CLI, "sweep", "word2vec", "-S", "word2vec.train.lr=0.002,0.02", "--jobs", "2"],
                          cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    sweep_id = re.match(r"sweep (sw[0-9a-f]{4}) ", done.stdout).group(1)
    names = {f"{sweep_id}-lr0.002", f"{sweep_id}-lr0.02"}
    assert names <= experiment_names(root)

    client = client_for(root)
    experiment = client.get_experiment_by_name("word2vec")
    runs = client.search_runs([experiment.experiment_id], f"tags.`d2lflow.sweep` = '{sweep_id}'")
    assert len(runs) == 2
    assert {r.data.tags["d2lflow.dvc_exp_name"] for r in runs} == names
    assert len({r.info.run_name for r in runs}) == 2 and all(r.info.run_name.endswith(tuple(names)) for r in runs)
    assert sorted(r.data.params["word2vec.train.lr"] for r in runs) == ["0.002", "0.02"]

    rows = [line.split() for line in done.stdout.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [row[1] for row in rows] != [] and len(rows) == 2
    by_id = {r.info.run_id: r for r in runs}
    ranked = [by_id[row[4]] for row in rows]
    losses = [r.data.metrics["heldout_loss"] for r in ranked]
    assert losses == sorted(losses) and losses[0] != losses[1]  # lower heldout_loss is better
    assert [row[1] for row in rows] == [r.data.tags["d2lflow.dvc_exp_name"] for r in ranked]
    (best_version,) = client.search_model_versions(f"run_id = '{ranked[0].info.run_id}'")
    assert client.get_model_version_by_alias("word2vec", "champion").version == best_version.version
    assert f"promoted: {rows[0][1]} (word2vec version {best_version.version}" in done.stdout

    shown = run(root, *CLI, "exp", "show", "word2vec", "--md").stdout
    columns = [cell.strip() for cell in shown.splitlines()[0].strip("|").split("|")]
    assert {"Experiment", "word2vec.train.lr", "heldout_loss", "wordsim353_spearman"} <= set(columns), columns
    params = [c for c in columns if "." in c]
    assert params and all(c.startswith("word2vec.") for c in params), columns  # no seed, device, mlflow.*, ...
    assert not {"mean_iou", "map_50", "pixel_accuracy", "seed", "device"} & set(columns), columns
    assert all(name in shown for name in names)
    changed = run(root, *CLI, "exp", "show", "word2vec", "--only-changed", "--md").stdout.splitlines()[0]
    assert "word2vec.train.lr" in changed and "word2vec.train.epochs" not in changed, changed
