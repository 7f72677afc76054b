"""Reproduce a registered word2vec model from its commit, end to end, in a temporary git copy of
the repository trained once with tiny params: an exact rebuild, a commit reproduced against its
dvc.lock, the refusals (each leaving no worktree behind), and `dvc exp show` agreeing with MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks import tracking
from tests.conftest import BIN, REPO, copy_repo, git, run

pytestmark = pytest.mark.slow
DVC = str(BIN / "dvc")
D2LFLOW = str(BIN / "d2lflow")
TINY = ["word2vec.data.synthetic.sentences=3000", "word2vec.train.epochs=2"]
MODEL = "artifacts/word2vec/train/model.pt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A repository copy (one clean commit) whose tiny word2vec is trained and registered (champion)."""
    home = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as env:  # the same isolation conftest gives every test
        for key in [k for k in os.environ if k.startswith(("MLFLOW_", "PREFECT_", "DVC_"))]:
            env.delenv(key)
        env.setenv("DO_NOT_TRACK", "true")
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        env.setenv("DVC_NO_ANALYTICS", "1")
        env.setenv("D2LFLOW_CACHE", str(home / "cache"))
        env.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        root = copy_repo(home / "repo", TINY)
        run(root, D2LFLOW, "acquire")
        run(root, DVC, "repro", "word2vec_register")
        yield root


def client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def champion_run(root: Path) -> str:
    return json.loads((root / "artifacts/word2vec/register/registered.json").read_text())["run_id"]


def reproduce(root: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m flows.reproduce ARGS --root ROOT` with its temporary folders under `tmp`."""
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.run([sys.executable, "-m", "flows.reproduce", *args, "--root", str(root)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def rows(output: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in output.splitlines() if line.strip()}


def assert_no_worktree_left(root: Path, tmp: Path) -> None:
    assert git(root, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert [path for path in tmp.iterdir() if path.name.startswith("d2lflow-reproduce-")] == []


@pytest.fixture
def restore_tags(trained: Path) -> Iterator[None]:
    """Refusal tests edit the champion run's tags; put them back afterwards."""
    run_id = champion_run(trained)
    before = dict(client(trained).get_run(run_id).data.tags)
    yield
    for key, value in before.items():
        client(trained).set_tag(run_id, key, value)


def test_reproducing_the_champion_rebuilds_the_identical_model(trained: Path, tmp_path: Path) -> None:
    done = reproduce(trained, tmp_path / "tmp", "word2vec@champion")
    assert done.returncode == 0, done.stdout + done.stderr
    table = rows(done.stdout)
    recorded = client(trained).get_run(champion_run(trained))
    model_md5 = recorded.data.tags[f"d2lflow.out_md5.{MODEL}"]
    assert table[MODEL] == [model_md5, model_md5, "OK"]
    assert model_md5 == subprocess.run(["md5sum", str(trained / MODEL)], capture_output=True,
                                       text=True).stdout.split()[0]
    heldout = repr(recorded.data.metrics["heldout_loss"])
    assert table["heldout_loss"] == [f"{float(heldout):.10g}"] * 2 + ["0", "0", "OK"]
    assert table["center_words_per_s"][-1] == "speed"
    assert "artifacts/word2vec/preprocess" in table and table["artifacts/word2vec/preprocess"][-1] == "OK"
    assert f"data {recorded.data.tags['d2lflow.data_dvc_md5']}: DVC cache" in done.stdout
    assert "RESULT: REPRODUCED" in done.stdout
    threads = recorded.data.tags["d2lflow.torch_threads"]  # CPU bits depend on it: the rebuild uses the same count
    assert f"torch threads {threads} (as recorded)" in done.stdout
    assert_no_worktree_left(trained, tmp_path / "tmp")
    assert [str(v.version) for v in client(trained).search_model_versions("name='word2vec'")] == ["1"]


def test_reproducing_a_commit_compares_against_its_dvc_lock(trained: Path, tmp_path: Path) -> None:
    git(trained, "add", "dvc.lock", "data.dvc")
    git(trained, "commit", "-q", "-m", "lock the tiny run")
    try:
        done = reproduce(trained, tmp_path / "tmp", "--rev", "HEAD", "--pipeline", "word2vec")
        assert done.returncode == 0, done.stdout + done.stderr
        head = git(trained, "rev-parse", "HEAD").strip()
        assert f"output md5 (recorded: dvc.lock at {head[:8]})" in done.stdout
        assert rows(done.stdout)[MODEL][-1] == "OK" and rows(done.stdout)["heldout_loss"][-2:] == ["not", "recorded"]
    finally:
        git(trained, "reset", "-q", "HEAD~1")
    assert_no_worktree_left(trained, tmp_path / "tmp")


@pytest.mark.parametrize(("spec", "tags", "message"), [
    ("word2vec@champion", {"d2lflow.git_dirty": "true", "d2lflow.git_dirty_files": "tasks/word2vec/train.py"},
     "trained from uncommitted changes on top of"),
    ("RUN_ID", {"d2lflow.git_commit": "f" * 40}, f"commit {'f' * 40} is not in the git repository"),
    ("word2vec@1", {"d2lflow.data_dvc_md5": "0123456789abcdef0123456789abcdef.dir"},
     "re-acquiring from the sources in the commit's params.yaml gave data .*, not the recorded "
     "0123456789abcdef0123456789abcdef.dir"),
])
def test_reproduce_refuses_clearly_and_leaves_no_worktree(trained: Path, tmp_path: Path, restore_tags: None,
                                                          spec: str, tags: dict, message: str) -> None:
    import re

    run_id = champion_run(trained)
    for key, value in tags.items():
        client(trained).set_tag(run_id, key, value)
    done = reproduce(trained, tmp_path / "tmp", run_id if spec == "RUN_ID" else spec)
    assert done.returncode == 2, done.stdout + done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and re.search(message, done.stderr), done.stderr
    assert done.stdout == ""
    assert_no_worktree_left(trained, tmp_path / "tmp")


def test_dvc_exp_show_and_mlflow_agree_on_an_experiments_metrics(tmp_path: Path) -> None:
    root = copy_repo(tmp_path / "repo", TINY)
    run(root, D2LFLOW, "acquire")
    run(root, DVC, "exp", "run", "word2vec_evaluate", "-n", "tiny-lr", "-S", "word2vec.train.lr=0.01")
    shown = json.loads(run(root, DVC, "exp", "show", "--json").stdout)
    experiments = [exp for commit in shown for exp in commit.get("experiments") or []
                   if exp.get("name") == "tiny-lr"]
    assert len(experiments) == 1
    data = experiments[0]["revs"][0]["data"]
    files = {path: file for path, file in data["metrics"].items() if path.startswith("artifacts/word2vec/")}
    assert sorted(files) == ["artifacts/word2vec/evaluate/metrics.json", "artifacts/word2vec/train/metrics.json"]
    dvc_metrics = {key: value for file in files.values() for key, value in file["data"].items()}
    run_id = json.loads((root / "artifacts/word2vec/train/run.json").read_text())["run_id"]
    recorded = client(root).get_run(run_id)
    assert recorded.info.run_name.endswith("-tiny-lr") and recorded.data.tags["d2lflow.dvc_exp_name"] == "tiny-lr"
    assert recorded.data.params["word2vec.train.lr"] == "0.01"
    compared = {key: value for key, value in dvc_metrics.items() if key != "center_words_per_s"}
    assert {"heldout_loss", "final_epoch_loss", "analogy_accuracy"} <= set(compared)
    numbers = tracking.recorded_numbers(recorded)  # scores are metrics, counts (epochs, vocab_size, ...) tags
    assert {key: numbers[key] for key in compared} == compared
    assert "epochs" in compared and "epochs" in recorded.data.tags and "epochs" not in recorded.data.metrics
