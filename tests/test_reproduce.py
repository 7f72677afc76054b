"""flows.reproduce without training: SPEC parsing, the refusals on a run's lineage tags, the
temporary worktree's cleanup, and the metric/output comparisons with their tolerances."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from flows.reproduce import (
    Row,
    Spec,
    compare_metrics,
    compare_outputs,
    compare_params,
    model_name,
    parse_spec,
    table,
    target_from_rev,
    target_from_run,
    temporary_worktree,
    tolerance_for,
)
from tasks.errors import D2lflowError
from tasks.params import Params, ToleranceParams
from tests.conftest import git

COMMIT_FILES = {"params.yaml": "seed: 0\n", "data.dvc": "outs:\n- md5: abc123.dir\n  hash: md5\n  path: data\n",
                "dvc.lock": "schema: '2.0'\nstages:\n  word2vec_train:\n    cmd: python -m tasks word2vec train\n"
                            "    outs:\n    - path: artifacts/word2vec/train/model.pt\n      hash: md5\n"
                            "      md5: 5eed\n  segmentation_train:\n    outs:\n    - path: other.pt\n"
                            "      md5: 0ther\n"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for name, text in COMMIT_FILES.items():
        (root / name).write_text(text)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one commit")
    return root


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD").strip()


def fake_run(**tags: str) -> SimpleNamespace:
    base = {"d2lflow.pipeline": "word2vec", "d2lflow.git_dirty": "false", "d2lflow.data_dvc_md5": "abc123.dir",
            "d2lflow.device": "cpu", "d2lflow.out_md5.artifacts/word2vec/train/model.pt": "5eed"}
    return SimpleNamespace(info=SimpleNamespace(run_id="f" * 32),
                           data=SimpleNamespace(tags={**base, **tags}, metrics={"heldout_loss": 0.25},
                                                params={"seed": "0"}))


@pytest.mark.parametrize(("text", "expected"), [
    ("word2vec@champion", Spec("alias", "word2vec", "champion")),
    ("fcn-voc@3", Spec("version", "fcn-voc", "3")),
    ("0123456789abcdef0123456789abcdef", Spec("run", "0123456789abcdef0123456789abcdef")),
])
def test_parse_spec_reads_alias_version_and_run_id(text: str, expected: Spec) -> None:
    assert parse_spec(text) == expected


@pytest.mark.parametrize("text", ["word2vec", "@champion", "word2vec@", "0123456789ABCDEF", "main~1"])
def test_parse_spec_rejects_anything_else_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(D2lflowError, match="MODEL@ALIAS"):
        parse_spec(text)


def test_a_pipeline_name_stands_for_its_registered_model() -> None:
    params = Params()
    assert model_name("segmentation", params) == "fcn-voc"
    assert model_name("word2vec", params) == "word2vec"
    assert model_name("my-model", params) == "my-model"


def test_target_from_a_clean_run_carries_its_commit_data_metrics_and_outputs(repo: Path) -> None:
    target = target_from_run(fake_run(**{"d2lflow.git_commit": head(repo)}), repo, "word2vec@champion")
    assert (target.pipeline, target.commit, target.data_md5, target.device) == ("word2vec", head(repo),
                                                                                 "abc123.dir", "cpu")
    assert target.recorded_outs == {"artifacts/word2vec/train/model.pt": "5eed"}
    assert target.recorded_metrics == {"heldout_loss": 0.25} and target.recorded_params == {"seed": "0"}


@pytest.mark.parametrize(("tags", "message"), [
    ({"d2lflow.git_dirty": "true", "d2lflow.git_dirty_files": "tasks/word2vec/train.py"},
     r"uncommitted changes .*tasks/word2vec/train\.py"),
    ({"d2lflow.git_commit": "unknown"}, "outside a git checkout"),
    ({"d2lflow.git_commit": "e" * 40}, f"commit {'e' * 40} is not in the git repository"),
    ({"d2lflow.data_dvc_md5": "unknown"}, "no data hash"),
    ({"d2lflow.pipeline": ""}, "not logged by a d2lflow stage"),
])
def test_target_from_run_refuses_what_cannot_be_rebuilt(repo: Path, tags: dict, message: str) -> None:
    with pytest.raises(D2lflowError, match=message):
        target_from_run(fake_run(**{"d2lflow.git_commit": head(repo), **tags}), repo, "spec")


def test_target_from_rev_reads_data_dvc_and_the_pipelines_locked_outputs(repo: Path) -> None:
    target = target_from_rev(repo, "main", "word2vec")
    assert (target.commit, target.data_md5) == (head(repo), "abc123.dir")
    assert target.recorded_outs == {"artifacts/word2vec/train/model.pt": "5eed"}
    assert target.outs_source == f"dvc.lock at {head(repo)[:8]}" and target.recorded_params is None
    with pytest.raises(D2lflowError, match="not a commit"):
        target_from_rev(repo, "no-such-branch", "word2vec")


def test_temporary_worktree_checks_out_the_commit_and_is_removed_even_on_failure(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []
    with pytest.raises(RuntimeError):
        with temporary_worktree(repo, head(repo)) as path:
            seen.append(path)
            assert (path / "params.yaml").read_text() == "seed: 0\n"
            assert git(path, "rev-parse", "HEAD").strip() == head(repo)
            raise RuntimeError("a failing reproduction")
    assert not seen[0].exists() and not seen[0].parent.exists()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    with temporary_worktree(repo, head(repo), keep=True) as kept:
        pass
    assert kept.is_dir() and kept.parent.parent == tmp_path
    subprocess.run(["git", "worktree", "remove", "--force", str(kept)], cwd=repo, check=True)


def test_metrics_match_within_atol_plus_rtol_and_speed_is_never_compared() -> None:
    tol = ToleranceParams(atol=1e-4, rtol=1e-2)
    recorded = {"loss": 1.0, "acc": 0.5, "images_per_s": 100.0, "epoch_seconds": 3.0}
    reproduced = {"loss": 1.0102, "acc": 0.505, "images_per_s": 50.0, "epoch_seconds": 9.0, "new": 2.0,
                  "flag": True, "name": "x"}
    rows = {row.name: row for row in compare_metrics(recorded, reproduced, tol, ["*_per_s", "*seconds*"])}
    assert set(rows) == {"loss", "acc", "images_per_s", "epoch_seconds", "new"}
    assert rows["loss"].status == "FAIL" and rows["loss"].tolerance == pytest.approx(1e-4 + 1e-2)
    assert rows["loss"].diff == pytest.approx(0.0102)
    assert rows["acc"].status == "OK" and rows["acc"].tolerance == pytest.approx(1e-4 + 5e-3)
    assert rows["images_per_s"].status == rows["epoch_seconds"].status == "speed"
    assert rows["new"].status == "not recorded"
    exact = compare_metrics({"loss": 0.1 + 0.2}, {"loss": 0.3}, ToleranceParams(atol=0, rtol=0), [])
    assert exact[0].status == "FAIL"  # the CPU tolerance is exact: 0.30000000000000004 != 0.3


def test_outputs_compare_md5s_and_list_metrics_plots_and_volatile_files_without_judging() -> None:
    recorded = {"m.pt": "aa", "pre": "bb.dir", "metrics.json": "cc", "a/train/run.json": "dd"}
    reproduced = {"m.pt": "aa", "pre": "ee.dir", "metrics.json": "ff", "a/train/run.json": "00", "new.json": "11"}
    rows = {row.name: row.status for row in compare_outputs(recorded, reproduced, ["*/run.json"], {"metrics.json"})}
    assert rows == {"m.pt": "OK", "pre": "FAIL", "metrics.json": "not compared", "a/train/run.json": "not compared",
                    "new.json": "not recorded"}


def test_params_differences_are_listed_as_mlflow_stores_them() -> None:
    recorded = {"seed": "0", "word2vec.train.lr": "0.002", "word2vec.evaluate.probe_words": "['chip', 'baby']"}
    current = {"seed": 0, "word2vec.train.lr": 0.02, "word2vec.evaluate.probe_words": ["chip", "baby"]}
    assert compare_params(recorded, current) == [Row("word2vec.train.lr", "0.002", "0.02", "FAIL")]


def test_tolerance_is_the_cuda_one_when_either_run_used_a_gpu() -> None:
    cfg = Params().reproduce
    assert tolerance_for(cfg, "cpu", "cpu") == ToleranceParams(atol=0, rtol=0)
    assert tolerance_for(cfg, "cuda:0", "cpu") == tolerance_for(cfg, "", "cuda") == cfg.cuda


def test_table_aligns_columns_and_shows_missing_values_as_dashes() -> None:
    text = table("metric", [Row("heldout_loss", 0.25, 0.25, "OK", 0.0, 0.0), Row("new", None, 2, "not recorded")])
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "recorded", "reproduced", "|diff|", "tolerance", "status"]
    assert lines[2].split() == ["heldout_loss", "0.25", "0.25", "0", "0", "OK"]
    assert lines[3].split() == ["new", "-", "2", "-", "-", "not", "recorded"]
    assert len({line.index("reproduced") if i == 0 else None for i, line in enumerate(lines)}) == 2
    assert lines[2].index("0.25") == lines[0].index("recorded")
