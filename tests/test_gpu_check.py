"""benchmarks/gpu_check.sh: without CUDA it stops at once with one clear error line; its checks run
(at toy sizes, on the CPU) through the project's training code. No GPU is needed for these tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(command: list[str], tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_without_cuda_the_check_exits_non_zero_with_one_error_line(tmp_path: Path):
    out = tmp_path / "gpu.json"
    done = _run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--out", str(out)], tmp_path, 120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the GPU check needs CUDA"), done.stderr
    assert "torch.cuda.is_available() is False" in lines[0]
    assert not out.exists()


def test_cpu_without_tiny_is_refused(tmp_path: Path):
    done = _run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                 "--out", str(tmp_path / "x.json")], tmp_path, 120)
    assert done.returncode == 2 and done.stderr.startswith("error: --device cpu is only for --tiny")


@pytest.mark.slow
def test_every_check_runs_at_toy_sizes_on_the_cpu_and_writes_its_figures(tmp_path: Path):
    out = tmp_path / "gpu.json"
    done = _run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                 "--out", str(out)], tmp_path, 600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed"] == [] and report["tiny"] is True
    checks = report["checks"]
    assert set(checks) == {"word2vec", "fcn", "faster_rcnn_resnet50_fpn", "ddp_world_size_1"}
    assert all(c["ok"] for c in checks.values())
    for optimizer in ("adam", "sparse_adam"):
        assert checks["word2vec"][optimizer]["center_words_per_s_after_warmup"] > 0
    assert checks["fcn"]["images_per_s_after_first_epoch"] > 0 and checks["fcn"]["batch_size"] == 4
    assert checks["faster_rcnn_resnet50_fpn"]["images_per_s"] > 0
    assert checks["ddp_world_size_1"] | {"backend": "gloo", "world_size": 1} == checks["ddp_world_size_1"]
    assert checks["ddp_world_size_1"]["all_parameters_got_gradients"]
