"""The sweep's grid: comma lists to a cartesian product, trial names that say what differs, and every
value validated by tasks.params before anything is queued (one `error:` line naming the key)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from flows.sweep import Trial, columns_of, grid_points, parse_grid, rank, table, trial_names, validate_grid, verdict
from tasks.errors import ParamsError
from tasks.params import RegisterParams

REPO = Path(__file__).resolve().parents[1]


def test_grid_is_the_cartesian_product_in_the_order_given() -> None:
    grid = parse_grid(["word2vec.train.lr=0.001,0.002", "word2vec.train.epochs=3, 5",
                       "word2vec.evaluate.probe_words=[a,b]"], "word2vec")
    assert grid == {"word2vec.train.lr": ["0.001", "0.002"], "word2vec.train.epochs": ["3", "5"],
                    "word2vec.evaluate.probe_words": ["[a,b]"]}
    points = grid_points(grid)
    assert [(p["word2vec.train.lr"], p["word2vec.train.epochs"]) for p in points] == [
        ("0.001", "3"), ("0.001", "5"), ("0.002", "3"), ("0.002", "5")]


def test_trial_names_carry_the_sweep_id_and_the_values() -> None:
    grid = parse_grid(["word2vec.train.lr=0.001,0.002", "word2vec.train.epochs=3"], "word2vec")
    assert trial_names("sw3f2a", grid) == ["sw3f2a-lr0.001-epochs3", "sw3f2a-lr0.002-epochs3"]
    same_tail = parse_grid(["word2vec.train.out_dir=a/b", "word2vec.evaluate.out_dir=c"], "word2vec")
    assert trial_names("sw1", same_tail) == ["sw1-word2vec_train_out_dira_b-word2vec_evaluate_out_dirc"]


@pytest.mark.parametrize("override, message", [
    ("segmentation.train.lr=0.1,0.2", "only keys under 'word2vec.'"),
    ("word2vec.train.lr=0.1,,0.2", "empty value"),
    ("word2vec.train.lr=0.1,0.1", "repeated"),
    ("word2vec.train.lr", "expected KEY=VALUE"),
])
def test_bad_grids_are_refused(override: str, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_grid([override], "word2vec")


def test_every_value_is_validated_and_the_error_names_the_key(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", params)
    before = params.read_text()
    validate_grid(params, parse_grid(["word2vec.train.lr=0.001,0.002"], "word2vec"))
    with pytest.raises(ParamsError) as caught:
        validate_grid(params, parse_grid(["word2vec.train.lr=0.001", "word2vec.train.epochs=2,many"], "word2vec"))
    assert "\n" not in str(caught.value)
    assert "word2vec.train.epochs=many" in str(caught.value)
    with pytest.raises(ParamsError, match="word2vec.train.no_such_key"):
        validate_grid(params, parse_grid(["word2vec.train.no_such_key=1,2"], "word2vec"))
    assert params.read_text() == before


def test_a_bad_value_fails_before_any_trial_is_queued(repo_copy: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["sweep", "word2vec", "--root", str(repo_copy), "-S", "word2vec.train.lr=0.001,0.002",
                 "-S", "word2vec.train.epochs=2,-1", "--jobs", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: -S word2vec.train.epochs=-1:"), err
    status = subprocess.run([sys.executable, "-m", "dvc", "queue", "status"], cwd=repo_copy, capture_output=True,
                            text=True, check=True).stdout
    assert "Queued" not in status and "sw" not in status, status


def test_exp_show_columns_are_the_pipelines_own() -> None:
    spec = {"stages": {"word2vec_train": {"metrics": ["artifacts/word2vec/train/metrics.json"]},
                       "word2vec_evaluate": {"metrics": [{"artifacts/word2vec/evaluate/metrics.json": {}}]},
                       "segmentation_train": {"metrics": ["artifacts/segmentation/train/metrics.json"]}}}
    data = {"params": {"params.yaml": {"data": {"seed": 0, "word2vec": {"train": {"lr": 0.002}},
                                                "segmentation": {"train": {"lr": 0.1}}}}},
            "metrics": {"artifacts/word2vec/train/metrics.json": {"data": {"loss": 1.0, "epochs": 2}},
                        "artifacts/word2vec/evaluate/metrics.json": {"data": {"heldout_loss": 0.5}},
                        "artifacts/segmentation/train/metrics.json": {"data": {"loss": 2.0, "mean_iou": 0.3}}}}
    shown = [{"rev": "workspace", "data": {}}, {"rev": "main", "data": {},
                                                "experiments": [{"revs": [{"name": "sw1-lr0.002", "data": data}]}]}]
    assert columns_of(spec, shown, "word2vec") == [
        "heldout_loss", "epochs", "artifacts/word2vec/train/metrics.json:loss", "word2vec.train.lr"]


def test_ranking_puts_the_best_first_and_failed_trials_last() -> None:
    trials = [Trial("a", {"lr": "1"}, "Success", metric=0.5), Trial("b", {"lr": "2"}, "Failed"),
              Trial("c", {"lr": "3"}, "Success", metric=0.2)]
    assert [t.name for t in rank(trials, greater_is_better=False)] == ["c", "a", "b"]
    assert [t.name for t in rank(trials, greater_is_better=True)] == ["a", "c", "b"]
    shown = table(rank(trials, False), "heldout_loss").splitlines()
    assert shown[1].split()[:2] == ["1", "c"] and shown[3].split()[:4] == ["-", "b", "lr=2", "FAILED"]


def test_the_verdict_names_the_champion_the_registry_holds(tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    client.create_registered_model("word2vec")
    for value in ("0.1", "0.3"):
        client.create_model_version("word2vec", str(tmp_path), tags={"d2lflow.primary_metric_value": value})
    cfg = RegisterParams(model_name="word2vec", primary_metric="heldout_loss", greater_is_better=False, out_dir="x")
    best = Trial("sw1-lr0.02", {}, "Success", metric=0.3, version=2)
    client.set_registered_model_alias("word2vec", "champion", "1")  # the champion from before is better
    assert verdict([best], cfg) == ("not promoted: the best trial sw1-lr0.02 (version 2, heldout_loss=0.3) does not "
                                    "beat the champion; champion is version 1 (heldout_loss=0.1)")
    client.set_registered_model_alias("word2vec", "champion", "2")
    assert verdict([best], cfg).startswith("promoted: sw1-lr0.02 (word2vec version 2, heldout_loss=0.3) is champion")


def test_a_sweep_whose_trials_all_failed_lists_them_and_exits_2(repo_copy: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    """The queue itself is replaced (the slow e2e test runs it): what DVC was asked, and the exit."""
    import flows.sweep as sweep_module

    calls = []
    monkeypatch.setattr(sweep_module, "prepare_store", lambda root, pipeline: None)
    monkeypatch.setattr(sweep_module, "run_dvc", lambda root, *args, **kw: calls.append(args) or "")
    monkeypatch.setattr(sweep_module, "wait_for", lambda root, names, timeout: dict.fromkeys(names, "Failed"))
    cfg = RegisterParams(model_name="word2vec", primary_metric="heldout_loss", greater_is_better=False, out_dir="x")
    monkeypatch.setattr(sweep_module, "collect", lambda root, pipeline, sweep_id, names, points, states: (
        [Trial(n, p, states[n]) for n, p in zip(names, points)], cfg))
    code = main(["sweep", "word2vec", "--root", str(repo_copy), "-S", "word2vec.train.lr=0.001,0.002", "-j", "2"])
    out, err = capsys.readouterr()
    assert code == 2
    trial = re.search(r"(sw[0-9a-f]{4})-lr0.001", out).group(1)
    assert calls == [("exp", "run", "--queue", "-n", f"{trial}-lr0.001", "-S", "word2vec.train.lr=0.001",
                      "word2vec_register"),
                     ("exp", "run", "--queue", "-n", f"{trial}-lr0.002", "-S", "word2vec.train.lr=0.002",
                      "word2vec_register"),
                     ("queue", "start", "-j", "2")]
    assert [line.split()[3] for line in out.splitlines()[2:4]] == ["FAILED", "FAILED"]
    assert err.strip().splitlines()[-1].startswith(f"error: sweep {trial}: every trial failed")


def test_exp_show_outside_a_repository_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["exp", "show", "word2vec", "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'dvc.yaml'} not found: run from the repository " \
                                              "root or pass --root"
