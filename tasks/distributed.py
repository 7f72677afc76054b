"""Multi-process training through torchrun (DDP): launching, the process group, each rank's share of
a global batch, and the few numbers every rank must agree on.

A training stage adopts it in a few lines (see tasks/word2vec/stages.py):

    if (summary := distributed.launch(params, PIPELINE, "train", metrics_file)) is not None:
        return summary                                  # world size > 1: torchrun ran it, rank 0 wrote
    with distributed.process_group(params) as ctx:      # ctx.device, ctx.rank, ctx.is_main
        state = distributed.load_shared_checkpoint(checkpoint, run_fingerprint, ctx)
        ddp_model = distributed.wrap(model, ctx)        # train through it; save `model` (unwrapped)
        ...  # each rank: its share of every global batch (shard, RankShares), global_sum(loss).backward()
        ...  # only ctx.is_main opens the MLflow run and writes outputs and checkpoints

World size 1 (the default) never creates a process group or a DDP wrapper: the single-process path
is the plain one, bit for bit.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import re
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from tasks.atomic import read_json
from tasks.errors import D2lflowError
from tasks.params import Params
from tasks.runtime import load_checkpoint, select_device

log = logging.getLogger(__name__)

# What torchrun's failure summary says about the first failed rank, and the last line of a worker's
# Python traceback (kept for the error message).
_ROOT_CAUSE = re.compile(r"^\s*(rank|exitcode|traceback)\s*:\s*(.+)$")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): \S.*$")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its device, its rank and how many processes train together."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None  # None: no process group (a single process)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs to MLflow and writes outputs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_worker() -> bool:
    """True inside a process torchrun started (it sets RANK, LOCAL_RANK and WORLD_SIZE)."""
    return all(key in os.environ for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def rank_label() -> str:
    """'rank R/W' inside a torchrun worker of a world above 1, else '' (prefixes logs and errors)."""
    if not is_worker() or int(os.environ["WORLD_SIZE"]) < 2:
        return ""
    return f"rank {os.environ['RANK']}/{os.environ['WORLD_SIZE']}"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def loopback_environment(params: Params) -> dict[str, str]:
    """With `master_addr` on loopback, gloo's and NCCL's own sockets on the loopback interface too
    (each picks the host's network interface by default); a user's own *_SOCKET_IFNAME wins."""
    if not is_loopback(params.distributed.master_addr):
        return {}
    import psutil

    addresses = {info[4][0] for info in socket.getaddrinfo(params.distributed.master_addr, None)}
    names = [name for name, found in psutil.net_if_addrs().items() if any(a.address in addresses for a in found)]
    if not names:
        return {}
    return {key: os.environ.get(key, names[0]) for key in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}


def torchrun_command(params: Params, pipeline: str, stage: str) -> list[str]:
    """`python -m tasks.distributed ... -m tasks PIPELINE STAGE --params FILE` as an argument list:
    torchrun (`torch.distributed.run`, same arguments) whose rendezvous store listens on a loopback
    `master_addr` only (see `torchrun_main`)."""
    cfg = params.distributed
    port = cfg.master_port
    if port is None:
        if cfg.nnodes > 1:
            raise D2lflowError(f"{params.source()}: distributed.master_port is null but distributed.nnodes is "
                               f"{cfg.nnodes}; set it to a free port on rank 0's host ({cfg.master_addr}), the same "
                               "on every node")
        port = _free_port(cfg.master_addr)
    return [sys.executable, "-m", "tasks.distributed", f"--nnodes={cfg.nnodes}",
            f"--nproc-per-node={cfg.nproc_per_node}", f"--node-rank={cfg.node_rank}",
            f"--master-addr={cfg.master_addr}", f"--master-port={port}",
            "-m", "tasks", pipeline, stage, "--params", str(params.source())]


def launch(params: Params, pipeline: str, stage: str, summary: Path) -> dict[str, Any] | None:
    """Run `stage` under torchrun when params ask for more than one process and this process is not
    already a torchrun worker; wait for it, echoing its output to stderr. Returns None when the
    caller should train itself, else the stage's summary: the JSON rank 0 wrote to `summary` (on
    node 0; other nodes have no outputs). A failed rank is a D2lflowError naming it."""
    cfg = params.distributed
    if cfg.world_size == 1 or is_worker():
        return None
    command = torchrun_command(params, pipeline, stage)
    log.info("%s %s: %d processes (%d per node, node %d of %d) through torchrun", pipeline, stage, cfg.world_size,
             cfg.nproc_per_node, cfg.node_rank, cfg.nnodes)
    tail: deque[str] = deque(maxlen=400)
    env = {**os.environ, **loopback_environment(params)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", env=env) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stderr.write(line)
                tail.append(line.rstrip("\n"))
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted while waiting: do not leave workers behind
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if code != 0:
        raise D2lflowError(failure_message(f"{pipeline} {stage}", cfg.world_size, code, list(tail)))
    if cfg.node_rank != 0:
        return {"node_rank": cfg.node_rank, "outputs": f"written by rank 0 on node 0 ({cfg.master_addr})"}
    return read_json(summary)


def failure_message(what: str, world_size: int, code: int, output: list[str]) -> str:
    """One line from torchrun's output: the workers' own `error:` lines, else the exceptions they
    raised and torchrun's root cause (which rank, its exit code or signal)."""
    by_message: dict[str, list[str]] = {}  # the same error from every rank is said once
    for line in output:
        if line.startswith("error: "):
            found = re.match(r"rank (\d+)/\d+: (.*)", line[len("error: "):])
            rank, message = found.groups() if found else ("?", line[len("error: "):])
            by_message.setdefault(message, []).append(rank)
    errors = [f"rank {', '.join(ranks)}: {message}" if len(ranks) == 1 else f"ranks {', '.join(sorted(ranks))}: "
              f"{message}" for message, ranks in by_message.items()]
    first = max((i for i, line in enumerate(output) if "Root Cause" in line), default=0)
    cause = [f"{m.group(1)} {m.group(2).strip()}" for m in map(_ROOT_CAUSE.match, output[first:]) if m]
    exceptions = list(dict.fromkeys(line for line in output[:first] if _EXCEPTION.match(line)))
    detail = "; ".join(errors or exceptions[:2] + cause[:3]) or "no worker reported an error (see the log above)"
    return (f"{what} under torchrun ({world_size} processes) failed with exit status {code}: {detail}. "
            "The log above has every rank's output")


def _backend(params: Params, device: torch.device) -> str:
    backend = params.distributed.backend
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise D2lflowError(f"{params.source()}: distributed.backend is nccl but the device is {device}; "
                           "nccl needs CUDA: set distributed.backend to auto or gloo")
    return backend


def worker_device(params: Params, local_rank: int, world_size: int) -> torch.device:
    """The device of one rank: `device` from params, and on CUDA the GPU numbered LOCAL_RANK."""
    device = select_device(params.device)
    if device.type != "cuda" or world_size == 1:
        return device
    if params.device.startswith("cuda:"):
        raise D2lflowError(f"{params.source()}: device is '{params.device}', one fixed GPU, but {world_size} "
                           "processes train together and each uses the GPU numbered by its LOCAL_RANK; "
                           "set device to cuda or auto")
    if local_rank >= torch.cuda.device_count():
        raise D2lflowError(f"{params.source()}: distributed.nproc_per_node asks for GPU {local_rank} but this node "
                           f"has {torch.cuda.device_count()}; lower distributed.nproc_per_node")
    return torch.device("cuda", local_rank)


@contextmanager
def process_group(params: Params) -> Iterator[Context]:
    """This process's Context; inside a torchrun worker of a world above 1 also the process group
    (gloo on CPU, nccl on CUDA), destroyed on the way out, also on error."""
    if not is_worker() or int(os.environ["WORLD_SIZE"]) == 1:
        yield Context(select_device(params.device))
        return
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if world_size != params.distributed.world_size:
        log.warning("torchrun started %d processes but params.yaml asks for %d (distributed.*); training with %d",
                    world_size, params.distributed.world_size, world_size)
    device = worker_device(params, local_rank, world_size)
    backend = _backend(params, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    try:
        yield Context(device, rank, local_rank, world_size, backend)
    finally:
        dist.destroy_process_group()


def main_only(ctx: Context, manager: AbstractContextManager[Any]) -> AbstractContextManager[Any]:
    """`manager` on rank 0 (e.g. the MLflow training run), an empty context yielding None elsewhere."""
    return manager if ctx.is_main else nullcontext()


def wrap(module: nn.Module, ctx: Context) -> nn.Module:
    """`module` in DistributedDataParallel when several processes train (gradients averaged over the
    ranks in backward), else `module` itself. Save the unwrapped module's state_dict."""
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def global_sum(loss: torch.Tensor, ctx: Context) -> torch.Tensor:
    """What a rank back-propagates for `loss`, the sum over its share of a global batch: DDP averages
    gradients over the ranks, so scaled by the world size the result is the gradient of the sum over
    the whole batch, the single-process gradient (up to float summation order). One process: `loss`."""
    return loss * ctx.world_size if ctx.distributed else loss


def shard(size: int, ctx: Context) -> slice:
    """This rank's contiguous part of a global batch of `size` items: the parts, in rank order, are
    the whole batch and their sizes differ by at most one (a part may be empty)."""
    base, extra = divmod(size, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return slice(start, start + base + (1 if ctx.rank < extra else 0))


class RankShares(Sampler[list[int]]):
    """This rank's share of each global batch of `batches` (every rank draws the same global batches,
    e.g. a BatchSampler over a RandomSampler seeded alike): a DataLoader's `batch_sampler` under DDP."""

    def __init__(self, batches: BatchSampler, ctx: Context) -> None:
        self.batches, self.ctx = batches, ctx

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[shard(len(batch), self.ctx)]

    def __len__(self) -> int:
        return len(self.batches)


def shuffled_loader(dataset: Dataset, batch_size: int, generator: torch.Generator, ctx: Context,
                    **options: Any) -> DataLoader:
    """`DataLoader(dataset, batch_size, shuffle=True, generator=generator, **options)` and, under DDP, this
    rank's share of each of its batches: RandomSampler is what shuffle=True builds, and the loader draws
    its base seed from `generator` before the sampler draws its order, so the ranks' shares put together
    are exactly the single-process batches."""
    if not ctx.distributed:
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, **options)
    batches = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=False)
    return DataLoader(dataset, batch_sampler=RankShares(batches, ctx), generator=generator, **options)


def all_sum(values: Sequence[float], ctx: Context) -> list[float]:
    """The sums over all ranks of `values` (float64), e.g. an epoch's loss and example counts."""
    if not ctx.distributed:
        return [float(v) for v in values]
    total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(total)
    return total.tolist()


def load_shared_checkpoint(path: Path, fingerprint: str, ctx: Context) -> dict[str, Any] | None:
    """Rank 0's checkpoint on every rank, so all resume from the same weights and optimizer state.
    Rank 0 reads the file and broadcasts its bytes (nodes need not share a filesystem); every rank
    loads them with `weights_only`, under the same fingerprint check as a single process."""
    if not ctx.distributed:
        return load_checkpoint(path, fingerprint)
    data = path.read_bytes() if ctx.is_main and path.is_file() else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=ctx.device)
    dist.broadcast(size, src=0)
    if int(size) == 0:
        return None
    buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(ctx.device) if ctx.is_main
              else torch.empty(int(size), dtype=torch.uint8, device=ctx.device))
    dist.broadcast(buffer, src=0)
    return load_checkpoint(path, fingerprint, io.BytesIO(buffer.cpu().numpy().tobytes()))


def _loopback_rendezvous() -> type:
    """torchrun's static rendezvous, except that on a loopback `master_addr` its store server listens
    on that address only: torch's TCPStore server listens on every interface (`*:PORT`), which would
    let any host on the network talk to the training processes' store."""
    from datetime import timedelta

    from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous

    class LoopbackStaticRendezvous(StaticTCPRendezvous):
        def next_rendezvous(self):  # noqa: ANN202 (torch's RendezvousInfo)
            if self._store is None and self.rank == 0 and is_loopback(self.master_addr):
                family = socket.getaddrinfo(self.master_addr, self.master_port, type=socket.SOCK_STREAM)[0][0]
                listener = socket.create_server((self.master_addr, self.master_port), family=family)
                timeout = self.timeout if isinstance(self.timeout, timedelta) else timedelta(seconds=self.timeout)
                self._store = dist.TCPStore(self.master_addr, self.master_port, self.world_size, True, timeout,
                                            multi_tenant=True, master_listen_fd=listener.detach())
            return super().next_rendezvous()

    return LoopbackStaticRendezvous


def torchrun_main(argv: list[str]) -> None:
    """`torch.distributed.run` (torchrun) with `argv`, its static rendezvous bound to a loopback
    master_addr (a non-loopback master_addr is the user's choice: torch's store then listens on every
    interface, as torchrun's does)."""
    from torch.distributed import run
    from torch.distributed.elastic.rendezvous import static_tcp_rendezvous

    static_tcp_rendezvous.StaticTCPRendezvous = _loopback_rendezvous()  # what torchrun's "static" handler builds
    run.main(argv)


if __name__ == "__main__":
    torchrun_main(sys.argv[1:])
