"""Multi-process training through torchrun (DDP, gloo on the CPU): each rank's share of a global
batch, DDP gradients equal to one process's, the launcher's command and error message, and real
`torchrun --nproc-per-node 2` runs of the train stages in temporary git copies of the repository:
the loss curve matches one process, rank 0 alone logs and writes, and a failing rank fails the
stage with an error naming it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from models.skipgram import PairLogits, SkipGram
from tasks import distributed
from tasks.distributed import Context, failure_message, shard, torchrun_command
from tasks.errors import D2lflowError, ParamsError
from tasks.params import SegmentationTrainParams, parse_params, set_params
from tasks.segmentation.train import check_distributed, epoch_loader, pixel_loss
from tasks.voc import VOID
from tasks.word2vec.train import pair_loss
from tests.conftest import copy_repo, run
from tests.servers import free_port

CPU = torch.device("cpu")

# ----------------------------------------------------------------------------- shares of a batch


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_are_the_whole_batch_in_rank_order_and_differ_by_at_most_one(world_size: int):
    for size in range(0, 11):
        parts = [list(range(size))[shard(size, Context(CPU, rank, rank, world_size))] for rank in range(world_size)]
        assert sum(parts, []) == list(range(size))
        lengths = [len(p) for p in parts]
        assert max(lengths) - min(lengths) <= 1
    assert shard(5, Context(CPU, 1, 1, 2)) == slice(3, 5)  # rank 0 takes the extra item
    assert shard(1, Context(CPU, 1, 1, 2)) == slice(1, 1)  # a last batch smaller than the world


class _Indices(torch.utils.data.Dataset):
    """Stands in for SegmentationDataset: item i is i."""

    def __len__(self) -> int:
        return 11

    def __getitem__(self, index: int) -> int:
        return index

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


@pytest.mark.parametrize("epoch", [0, 3])
def test_the_ranks_segmentation_batches_are_the_single_process_batches_split(epoch: int):
    cfg = SegmentationTrainParams(batch_size=4)
    single = [b.tolist() for b in epoch_loader(_Indices(), cfg, 0, epoch, CPU, Context(CPU))]
    shares = [[b.tolist() for b in epoch_loader(_Indices(), cfg, 0, epoch, CPU, Context(CPU, rank, rank, 2))]
              for rank in (0, 1)]
    assert [a + b for a, b in zip(*shares)] == single
    assert sorted(sum(single, [])) == list(range(11)) and single != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert [len(b) for b in shares[0]] == [2, 2, 2] and [len(b) for b in shares[1]] == [2, 2, 1]


@pytest.mark.parametrize("epoch", [0, 2])
def test_the_ranks_detection_batches_are_the_single_process_batches_split(epoch: int):
    from tasks.detection import train as detection_train
    from tasks.params import DetectionTrainParams

    def ids(loader) -> list[list[int]]:
        return [[int(t["image_id"]) for t in targets] for _, targets in loader]

    class Boxes(_Indices):  # DetectionDataset's items: (image, target dict)
        def __getitem__(self, index: int):
            return torch.zeros(1), {"image_id": torch.tensor(index)}

    cfg = DetectionTrainParams(batch_size=4)
    single = ids(detection_train.epoch_loader(Boxes(), cfg, 0, epoch, Context(CPU)))
    shares = [ids(detection_train.epoch_loader(Boxes(), cfg, 0, epoch, Context(CPU, rank, rank, 2))) for rank in (0, 1)]
    assert [a + b for a, b in zip(*shares)] == single
    assert sorted(sum(single, [])) == list(range(11)) and [len(b) for b in shares[1]] == [2, 2, 1]


def test_segmentation_refuses_a_batch_a_rank_would_get_nothing_of():
    two = Context(CPU, 0, 0, 2)
    check_distributed(SegmentationTrainParams(batch_size=4), 10, two)  # batches 4, 4, 2
    with pytest.raises(D2lflowError, match=r"with 9 training images a batch has only 1.*batch_size"):
        check_distributed(SegmentationTrainParams(batch_size=4), 9, two)  # last batch of 1
    with pytest.raises(D2lflowError, match="a batch has only 1"):
        check_distributed(SegmentationTrainParams(batch_size=1), 8, two)
    check_distributed(SegmentationTrainParams(batch_size=1), 9, Context(CPU))  # one process: anything goes
    with pytest.raises(D2lflowError, match=r"sync_batchnorm needs CUDA.*set it to false"):
        check_distributed(SegmentationTrainParams(batch_size=4, sync_batchnorm=True), 8, two)


# ----------------------------------------------------------------------------- DDP gradients


def _skipgram_case():
    """A SkipGram and a batch of 7 centers (shares of 4 and 3 on two ranks)."""
    from tasks.word2vec.train import flatten_examples
    from tests.word2vec_fixtures import random_samples

    samples = random_samples(np.random.default_rng(0), 20, 30, k=5, max_ctx=6)
    torch.manual_seed(0)
    model = SkipGram(30, 8)
    with torch.no_grad():  # larger than Xavier's weights, so the logits are not all near 0
        model.embed_v.weight.mul_(5)
        model.embed_u.weight.mul_(5)
    return model, flatten_examples(samples, np.arange(20)), torch.tensor([3, 17, 0, 8, 11, 5, 19])


def _fcn_case():
    """The FCN in eval mode (BatchNorm then ignores how the batch is split) and 3 labelled images."""
    from models.fcn import build_fcn

    torch.manual_seed(0)
    model = build_fcn(21, "none").eval()
    images = torch.randn(3, 3, 64, 64)
    labels = torch.randint(0, 21, (3, 64, 64))
    labels[1, :20] = VOID
    return model, images, labels


def _gradients(skipgram: torch.nn.Module, fcn: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = [*(("skipgram." + n, p) for n, p in skipgram.named_parameters()),
             *(("fcn." + n, p) for n, p in fcn.named_parameters())]
    return {name: p.grad.clone() for name, p in named}


def _ddp_rank(rank: int, world_size: int, store: str, out: str) -> None:
    """One rank of test_ddp_gradients_equal_the_single_process_gradients (started by torch.multiprocessing)."""
    from torch import distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        ctx = Context(CPU, rank, rank, world_size, "gloo")
        skipgram, entries, rows = _skipgram_case()
        part = entries.select(rows[shard(len(rows), ctx)])
        ddp = distributed.wrap(PairLogits(skipgram), ctx)
        distributed.global_sum(pair_loss(ddp(part.centers, part.words), part), ctx).backward()
        fcn, images, labels = _fcn_case()
        share = shard(len(images), ctx)
        ddp = distributed.wrap(fcn, ctx)  # held until backward: DDP's reducer does the all-reduce
        distributed.global_sum(pixel_loss(ddp(images[share]), labels[share]).sum(), ctx).backward()
        torch.save(_gradients(skipgram, fcn), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradients_equal_the_single_process_gradients(tmp_path: Path):
    # The contract behind "the loss curve matches": each rank back-propagates global_sum of the loss over
    # its share (7 centers as 4 + 3, 3 images as 2 + 1) through DDP (word2vec's custom autograd function
    # via PairLogits), and the averaged gradients are the gradient of the whole batch's summed loss.
    import torch.multiprocessing as mp

    mp.start_processes(_ddp_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    skipgram, entries, rows = _skipgram_case()
    pair_loss(skipgram.pair_logits(entries.select(rows).centers, entries.select(rows).words),
              entries.select(rows)).backward()
    fcn, images, labels = _fcn_case()
    pixel_loss(fcn(images), labels).sum().backward()
    single = _gradients(skipgram, fcn)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == single.keys() and len(single) > 60
    for name, expected in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # all-reduced: the same on every rank
        scale = float(expected.abs().max())
        assert scale > 0 or name.endswith("bias"), name
        assert torch.allclose(ranks[0][name], expected, rtol=0, atol=1e-5 * max(scale, 1e-12)), name


# ----------------------------------------------------------------------------- launcher


def _params(tmp_path: Path, **distributed_cfg) -> object:
    return parse_params({"distributed": distributed_cfg}, tmp_path / "params.yaml")


def test_torchrun_command_is_an_argument_list_from_params(tmp_path: Path):
    params = _params(tmp_path, nproc_per_node=4, nnodes=2, node_rank=1, master_addr="10.0.0.5", master_port=29555)
    assert torchrun_command(params, "word2vec", "train") == [
        sys.executable, "-m", "tasks.distributed", "--nnodes=2", "--nproc-per-node=4", "--node-rank=1",
        "--master-addr=10.0.0.5", "--master-port=29555", "-m", "tasks", "word2vec", "train",
        "--params", str((tmp_path / "params.yaml").resolve())]
    single_node = torchrun_command(_params(tmp_path, nproc_per_node=2), "segmentation", "train")
    port = int(single_node[7].removeprefix("--master-port="))
    assert 0 < port < 65536 and single_node[6] == "--master-addr=127.0.0.1"


def test_several_nodes_need_a_master_port_and_a_node_rank_below_nnodes(tmp_path: Path):
    with pytest.raises(D2lflowError, match=r"master_port is null but distributed.nnodes is 2"):
        torchrun_command(_params(tmp_path, nproc_per_node=1, nnodes=2), "word2vec", "train")
    with pytest.raises(ParamsError, match=r"distributed.*node_rank must be below nnodes \(2\)"):
        _params(tmp_path, nnodes=2, node_rank=2)


def test_launch_leaves_one_process_and_torchrun_workers_to_train_themselves(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.json"
    assert distributed.launch(_params(tmp_path), "word2vec", "train", metrics) is None
    for key, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    assert distributed.launch(_params(tmp_path, nproc_per_node=2), "word2vec", "train", metrics) is None
    assert distributed.rank_label() == "rank 1/2"


def test_failure_message_says_each_workers_error_once_with_its_ranks():
    output = ["some log line", "error: rank 1/2: epoch 1: the loss is not finite (nan)",
              "error: rank 0/2: epoch 1: the loss is not finite (nan)", "error: rank 0/2: could not write x"]
    message = failure_message("word2vec train", 2, 1, output)
    assert message.startswith("word2vec train under torchrun (2 processes) failed with exit status 1: ")
    assert "ranks 0, 1: epoch 1: the loss is not finite (nan); rank 0: could not write x" in message


def test_failure_message_without_worker_errors_names_torchruns_root_cause():
    summary = """Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 11)  (SIGTERM)
  traceback : Signal 15 (SIGTERM) received by PID 11
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-22_23:06:40
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 12)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 12""".splitlines()
    message = failure_message("word2vec train", 2, 1, summary)
    assert message.endswith(": rank 1 (local_rank: 1); exitcode -9 (pid: 12); traceback Signal 9 (SIGKILL) "
                            "received by PID 12. The log above has every rank's output")
    crashed = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
               "RuntimeError: CUDA out of memory", *summary]  # a bug or a crash, not a D2lflowError
    assert "exit status 1: RuntimeError: CUDA out of memory; rank 1 (local_rank: 1); exitcode -9" in (
        failure_message("word2vec train", 2, 1, crashed))


# ----------------------------------------------------------------------------- real torchrun runs

WORD2VEC = ["word2vec.data.synthetic.sentences=3000", "word2vec.train.epochs=3", "word2vec.train.embed_size=32",
            "word2vec.train.batch_size=128", "word2vec.train.lr=0.01", "mlflow.system_metrics=false"]


def _env(root: Path, store: str) -> dict[str, str]:
    """Each run its own MLflow store; one thread per worker so two fit on two cores."""
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / store}", "OMP_NUM_THREADS": "1"}


def _train(root: Path, pipeline: str, overrides: list[str], store: str, fresh: bool = True,
           check: bool = True) -> subprocess.CompletedProcess:
    """The train stage as DVC runs it (`python -m tasks PIPELINE train`), after params overrides."""
    set_params(root / "params.yaml", overrides)
    if fresh:
        for folder in (f"checkpoints/{pipeline}", f"artifacts/{pipeline}/train"):
            subprocess.run(["rm", "-rf", str(root / folder)], check=True)
    done = subprocess.run([sys.executable, "-m", "tasks", pipeline, "train"], cwd=root, env=_env(root, store),
                          capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, f"train failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def _runs(root: Path, store: str) -> list:
    client = MlflowClient(f"sqlite:///{root / store}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _losses(root: Path, store: str, run_id: str) -> list[float]:
    history = MlflowClient(f"sqlite:///{root / store}").get_metric_history(run_id, "train_loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def _ddp(port: int) -> list[str]:
    return ["distributed.nproc_per_node=2", f"distributed.master_port={port}"]


@pytest.fixture(scope="module")
def word2vec_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_repo(tmp_path_factory.mktemp("ddp") / "repo", WORD2VEC)
    for stage in ("acquire", "preprocess"):
        run(root, sys.executable, "-m", "tasks", "word2vec", stage, timeout=300)
    return root


@pytest.mark.slow
def test_two_gloo_processes_train_word2vec_like_one_and_only_rank_0_logs_and_writes(word2vec_repo: Path):
    root = word2vec_repo
    _train(root, "word2vec", ["distributed.nproc_per_node=1"], "single.db")
    (single_run,) = _runs(root, "single.db")
    single_losses = _losses(root, "single.db", single_run.info.run_id)
    single_weights = torch.load(root / "artifacts/word2vec/train/model.pt", weights_only=True)

    done = _train(root, "word2vec", _ddp(free_port()), "ddp.db")
    runs = _runs(root, "ddp.db")
    assert len(runs) == 1, "rank 0 alone opens the MLflow run"
    (ddp_run,) = runs
    assert ddp_run.data.tags["d2lflow.world_size"] == "2" and single_run.data.tags["d2lflow.world_size"] == "1"
    assert ddp_run.info.status == "FINISHED"
    ddp_losses = _losses(root, "ddp.db", ddp_run.info.run_id)  # one value per epoch: logged by one rank

    # It trains, and like one process: 2 ranks add their halves of each gradient in another order than one
    # process's index_add_ (float32, ~1e-7 relative per step). Measured here: the epoch losses differ by at
    # most 6e-9 over 3 epochs of 35 Adam steps, the final weights (|w| up to 0.9) by at most 1.4e-6. The
    # bounds (1e-6, 1e-4) leave room for other CPUs' summation orders and stay far below the loss's fall per
    # epoch (> 0.05), so a wrong shard or a rank training on its own fails them. (Adam is blind to a
    # constant gradient scale; test_ddp_gradients_equal_the_single_process_gradients checks the scale.)
    assert len(ddp_losses) == len(single_losses) == 3
    assert ddp_losses[-1] < ddp_losses[0] - 0.05
    assert np.allclose(ddp_losses, single_losses, rtol=0, atol=1e-6), (ddp_losses, single_losses)
    ddp_weights = torch.load(root / "artifacts/word2vec/train/model.pt", weights_only=True)
    assert ddp_weights.keys() == single_weights.keys() == {"embed_v.weight", "embed_u.weight"}
    assert all(torch.allclose(ddp_weights[k], single_weights[k], rtol=0, atol=1e-4) for k in ddp_weights)

    # Outputs exist once, all rank 0's: rank 1 would have recorded no run id in the checkpoint.
    train_dir = root / "artifacts/word2vec/train"
    assert sorted(p.name for p in train_dir.iterdir()) == ["history.csv", "metrics.json", "model.pt", "run.json",
                                                           "validation.csv"]
    assert json.loads((train_dir / "run.json").read_text())["run_id"] == ddp_run.info.run_id
    assert sorted(p.name for p in (root / "checkpoints/word2vec").iterdir()) == ["last.pt"]
    checkpoint = torch.load(root / "checkpoints/word2vec/last.pt", weights_only=True)
    assert checkpoint["run_id"] == ddp_run.info.run_id and checkpoint["epoch"] == 3
    assert '"outputs": "written by rank 0"' in done.stderr and '"rank": 1' in done.stderr
    assert json.loads(done.stdout)["epochs"] == 3

    # Run again: every rank resumes from rank 0's checkpoint (broadcast), nothing left to train.
    again = _train(root, "word2vec", _ddp(free_port()), "ddp.db", fresh=False)
    assert json.loads(again.stdout)["resumed_from_epoch"] == 3
    resumed = torch.load(root / "artifacts/word2vec/train/model.pt", weights_only=True)
    assert all(torch.equal(resumed[k], ddp_weights[k]) for k in resumed)
    runs = {r.info.run_id: r for r in _runs(root, "ddp.db")}
    assert len(runs) == 2  # the checkpoint's run had finished: this training got its own run
    (newer,) = (r for r in runs.values() if r.info.run_id != ddp_run.info.run_id)
    assert newer.data.tags["d2lflow.resumed_checkpoint_of_run"] == ddp_run.info.run_id


@pytest.mark.slow
def test_a_killed_rank_fails_the_stage_and_the_error_names_it(word2vec_repo: Path):
    import psutil

    root = word2vec_repo
    set_params(root / "params.yaml", _ddp(free_port()) + ["word2vec.train.epochs=50"])
    subprocess.run(["rm", "-rf", str(root / "checkpoints/word2vec"), str(root / "artifacts/word2vec/train")],
                   check=True)
    stage = subprocess.Popen([sys.executable, "-m", "tasks", "word2vec", "train"], cwd=root,
                             env=_env(root, "killed.db"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and stage.poll() is None:
            for child in psutil.Process(stage.pid).children(recursive=True):
                try:
                    if child.environ().get("RANK") == "1" and child.environ().get("LOCAL_RANK") == "1":
                        child.send_signal(signal.SIGKILL)
                        killed = child.pid
                        break
                except psutil.Error:  # a child that just exited
                    continue
            time.sleep(0.2)
        assert killed is not None, "rank 1 was never seen"
        _, stderr = stage.communicate(timeout=120)
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
            stage.wait(timeout=30)
        set_params(root / "params.yaml", ["word2vec.train.epochs=3"])
    assert stage.returncode == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: word2vec train under torchrun (2 processes) failed with exit status 1: "
                           f"rank 1 (local_rank: 1); exitcode -9 (pid: {killed})"), last
    assert not (root / "artifacts/word2vec/train/model.pt").exists()


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_together_and_only_node_0_has_outputs(word2vec_repo: Path):
    # Two "nodes" of one process each, as on two machines: node 0 runs the stage as DVC would, node 1
    # starts its workers with `python -m tasks word2vec train` and its own node_rank.
    root = word2vec_repo
    port = free_port()
    set_params(root / "params.yaml", ["distributed.nproc_per_node=1", "distributed.nnodes=2",
                                      f"distributed.master_port={port}"])
    (root / "node1.yaml").write_text((root / "params.yaml").read_text())
    set_params(root / "node1.yaml", ["distributed.node_rank=1"])
    subprocess.run(["rm", "-rf", str(root / "checkpoints/word2vec"), str(root / "artifacts/word2vec/train")],
                   check=True)
    node1 = subprocess.Popen([sys.executable, "-m", "tasks", "word2vec", "train", "--params", "node1.yaml"], cwd=root,
                             env=_env(root, "nodes.db"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        node0 = subprocess.run([sys.executable, "-m", "tasks", "word2vec", "train"], cwd=root,
                               env=_env(root, "nodes.db"), capture_output=True, text=True, timeout=300)
        out1, err1 = node1.communicate(timeout=120)
    finally:
        if node1.poll() is None:
            os.killpg(node1.pid, signal.SIGKILL)
            node1.wait(timeout=30)
        set_params(root / "params.yaml", ["distributed.nnodes=1", "distributed.master_port=null"])
    assert node0.returncode == 0, node0.stderr
    assert node1.returncode == 0, err1
    assert json.loads(out1) == {"node_rank": 1, "outputs": "written by rank 0 on node 0 (127.0.0.1)"}
    assert "[rank 1/2] tasks.progress: word2vec_train epoch 3/3" in err1  # node 1's worker trained all epochs
    assert json.loads(node0.stdout)["epochs"] == 3
    (nodes_run,) = _runs(root, "nodes.db")
    assert nodes_run.data.tags["d2lflow.world_size"] == "2"
    assert nodes_run.data.params["distributed.nnodes"] == "2"


SEGMENTATION = ["segmentation.data.synthetic.train_images=8", "segmentation.data.synthetic.val_images=2",
                "segmentation.data.synthetic.image_size=[72,80]", "segmentation.data.synthetic.small_fraction=0",
                "segmentation.preprocess.crop_size=[64,64]", "segmentation.train.batch_size=4",
                "segmentation.train.epochs=2", "mlflow.system_metrics=false"]


@pytest.mark.slow
def test_two_gloo_processes_train_the_fcn_and_an_error_on_the_ranks_is_one_line(tmp_path: Path):
    from models.fcn import build_fcn

    root = copy_repo(tmp_path / "repo", SEGMENTATION)
    for stage in ("acquire", "preprocess"):
        run(root, sys.executable, "-m", "tasks", "segmentation", stage, timeout=300)
    refused = _train(root, "segmentation", _ddp(free_port()) + ["segmentation.train.sync_batchnorm=true"],
                     "refused.db", check=False)
    assert refused.returncode == 2
    # Each rank refuses; torchrun stops the others once one has failed, so the line names the ranks that
    # got to report (the same error from several ranks is said once: the unit test of failure_message).
    assert re.match(r"error: segmentation train under torchrun \(2 processes\) failed with exit status 1: "
                    r"(rank [01]|ranks 0, 1): segmentation\.train\.sync_batchnorm needs CUDA",
                    refused.stderr.strip().splitlines()[-1])
    assert _runs(root, "refused.db") == []  # checked before the MLflow run is opened

    done = _train(root, "segmentation", _ddp(free_port()) + ["segmentation.train.sync_batchnorm=false"], "fcn.db")
    (fcn_run,) = _runs(root, "fcn.db")
    assert fcn_run.data.tags["d2lflow.world_size"] == "2" and fcn_run.info.status == "FINISHED"
    # BatchNorm normalises over each rank's 2 images instead of the batch's 4, so this curve is not the
    # single-process one (README: sync_batchnorm on GPUs); the word2vec test above checks the curve.
    losses = _losses(root, "fcn.db", fcn_run.info.run_id)
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[0] != losses[1], losses
    metrics = json.loads(done.stdout)
    assert metrics["train_images"] == 8 and metrics["epochs"] == 2 and 0 < metrics["train_pixel_accuracy"] <= 1
    weights = torch.load(root / "artifacts/segmentation/train/model.pt", weights_only=True)
    assert weights.keys() == build_fcn(21, "none").state_dict().keys()  # the unwrapped module's keys
    assert sorted(p.name for p in (root / "artifacts/segmentation/train").iterdir()) == [
        "history.csv", "metrics.json", "model.pt", "run.json", "validation.csv"]
    assert torch.load(root / "checkpoints/segmentation/last.pt", weights_only=True)["run_id"] == fcn_run.info.run_id


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of `pid` and its descendants."""
    import psutil

    found: set[tuple[str, int]] = set()
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return found
    for process in processes:
        try:
            found |= {(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="tcp")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.Error:  # a process that just exited
            continue
    return found


@pytest.mark.slow
def test_a_loopback_master_addr_leaves_nothing_listening_beyond_loopback(word2vec_repo: Path):
    """torchrun's rendezvous store (and gloo's sockets) listen on master_addr only: torch's own static
    rendezvous binds its TCPStore to every interface, reachable from the network during training."""
    import ipaddress

    root = word2vec_repo
    port = free_port()
    set_params(root / "params.yaml", _ddp(port) + ["word2vec.train.epochs=6"])
    subprocess.run(["rm", "-rf", str(root / "checkpoints/word2vec"), str(root / "artifacts/word2vec/train")],
                   check=True)
    stage = subprocess.Popen([sys.executable, "-m", "tasks", "word2vec", "train"], cwd=root,
                             env=_env(root, "loopback.db"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    seen: set[tuple[str, int]] = set()
    try:
        while stage.poll() is None:
            seen |= _listening(stage.pid)
            time.sleep(0.1)
        _, stderr = stage.communicate(timeout=300)
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
            stage.wait(timeout=30)
        set_params(root / "params.yaml", ["distributed.nproc_per_node=1", "distributed.master_port=null",
                                          "word2vec.train.epochs=3"])
    assert stage.returncode == 0, stderr[-3000:]
    assert ("127.0.0.1", port) in seen, f"the rendezvous store was never seen listening: {sorted(seen)}"
    exposed = sorted((ip, p) for ip, p in seen if not ipaddress.ip_address(ip).is_loopback)
    assert exposed == [], f"listening beyond loopback during DDP training: {exposed}"
