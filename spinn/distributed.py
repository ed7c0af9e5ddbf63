"""Data-parallel training over the processes torchrun starts: process group, shards, sums over ranks.

    torchrun --standalone --nproc_per_node=4 scripts/train.py --config configs/snli_spinn_pi.yaml

torchrun runs one copy of the script per GPU and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address in the environment; `setup` reads them and joins the process group (NCCL on CUDA,
each process on GPU ``LOCAL_RANK``; gloo on the CPU). The model is wrapped in torch's
`DistributedDataParallel`, which averages the gradients over the ranks in the backward pass. Run
without torchrun, every function here is the single-process identity (rank 0 of 1).

**Batch size.** ``train.batch_size`` is the *global* batch: each of the K ranks takes
``batch_size / K`` pairs per step (it must divide), and DDP averages the K shard gradients, which is
the gradient of the mean loss over the whole batch. A K-GPU run therefore takes the same number of
optimiser steps per epoch, of the same size, as one process, and needs no change of learning rate
(nor of ``lr_decay_steps``, ``eval_every`` or ``max_steps``). Each rank buckets its own share by
length, so the pairs that make up one global batch differ from the single-process run's; the runs
agree in distribution, not pair for pair.

**Evaluation** is sharded: rank r scores pairs r, r + K, r + 2K, ... and the per-pair predictions are
summed over the ranks, so every rank holds the same figures as a single process on the same weights.
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from spinn import cli
from spinn.data.batching import BucketBatchSampler
from spinn.errors import SpinnError

#: The environment variables torchrun sets in each process it starts.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True in a process started by torchrun (or given its environment by hand)."""
    return "WORLD_SIZE" in os.environ


def is_distributed() -> bool:
    """True once `setup` has joined a process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group; return the device this process trains on.

    Without torchrun's environment, nothing happens and `device` is returned. Under torchrun, a CUDA
    `device` becomes ``cuda:LOCAL_RANK`` (NCCL); the CPU uses gloo.

    Raises:
        SpinnError: an environment variable torchrun sets is missing or malformed, LOCAL_RANK names a
            GPU that is not there, or the device is neither CUDA nor the CPU.
    """
    if not launched():
        return device
    env = {}
    for name in TORCHRUN_ENV:
        if name not in os.environ:
            raise SpinnError(
                f"environment variable {name} is not set (WORLD_SIZE is): start the run with torchrun"
            )
        env[name] = os.environ[name]
    try:
        local_rank = int(env["LOCAL_RANK"])
    except ValueError:
        raise SpinnError(
            f"environment variable LOCAL_RANK: expected an integer, found {env['LOCAL_RANK']!r}"
        ) from None
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise SpinnError(
                f"LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} CUDA device(s): "
                f"start at most that many processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise SpinnError(
            f"train.device {device.type!r}: distributed training runs on CUDA (NCCL) or the CPU (gloo)"
        )
    dist.init_process_group(backend)
    return device


def teardown() -> None:
    """Leave the process group (no-op in a single process)."""
    if is_distributed():
        # Free now whatever still holds the group (a DistributedDataParallel wrapper in a reference
        # cycle), not at interpreter shutdown, where gloo's threads can abort the process.
        gc.collect()
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` under DistributedDataParallel; `model` itself in a single process.

    Batch norm becomes SyncBatchNorm on CUDA, so its statistics are those of the global batch; torch
    has no SyncBatchNorm on the CPU, where each rank normalises over its own share (with a warning).
    Checkpoints hold the state of `model` (the unwrapped module): SyncBatchNorm keeps BatchNorm's
    keys, so they load in a single process.
    """
    if not is_distributed():
        return model
    has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_batch_norm and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif has_batch_norm and cli.is_main_process():
        warnings.warn(
            "model.batch_norm on the CPU: each process normalises over its own share of the batch "
            "(torch's SyncBatchNorm needs CUDA)",
            stacklevel=2,
        )
    # No device_ids: the batch is already on this process's device, so DDP need not move inputs.
    return DistributedDataParallel(model)


def local_batch_size(batch_size: int) -> int:
    """This rank's share of the global ``train.batch_size``.

    Raises:
        SpinnError: the batch size is not a multiple of the number of processes.
    """
    k = world_size()
    if batch_size % k:
        raise SpinnError(
            f"train.batch_size {batch_size} is the global batch and must be a multiple of the {k} "
            f"processes; use e.g. --set train.batch_size={batch_size - batch_size % k or k}"
        )
    return batch_size // k


def train_sampler(lengths: Sequence[int] | torch.Tensor, batch_size: int, seed: int) -> BucketBatchSampler:
    """The bucketing sampler for this rank: disjoint batches of ``batch_size / K`` pairs, the same
    number on every rank, every pair once per epoch over all ranks (see `BucketBatchSampler`).

    Raises:
        SpinnError: as `local_batch_size`.
    """
    return BucketBatchSampler(
        lengths,
        local_batch_size(batch_size),
        shuffle=True,
        seed=seed,
        num_replicas=world_size(),
        rank=rank(),
    )


def sampler_state(saved: dict[str, Any]) -> dict[str, Any]:
    """A sampler state saved by rank 0, for this rank: all ranks are at the same batch of the epoch.

    Raises:
        SpinnError: the checkpoint was written by a run with another number of processes.
    """
    saved_k = saved.get("num_replicas", 1)
    if saved_k != world_size():
        raise SpinnError(
            f"the checkpoint was written by a run of {saved_k} process(es) and this run has {world_size()}: "
            f"resume with the same torchrun --nproc_per_node/--nnodes (the order of batches depends on it)"
        )
    return {**saved, "rank": rank()}


def shard(n: int) -> torch.Tensor:
    """(n / K,) long: the indices of n items this rank evaluates (r, r + K, ...); all n in one process."""
    return torch.arange(rank(), n, world_size())


def sum_over_ranks(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Element-wise sums of each tensor over the ranks, on each tensor's own device (inputs unchanged).

    NCCL reduces only CUDA tensors, so CPU tensors travel through this process's GPU and back.
    """
    if not is_distributed():
        return list(tensors)
    via = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    out = []
    for t in tensors:
        buf = t.to(via) if via is not None else t.clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        out.append(buf.to(t.device))
    return out


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank, in place.

    DDP does this before each training forward, but the last forward leaves each rank with the
    statistics of its own share; evaluation must use rank 0's, the ones its checkpoints hold.
    """
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is True on at least one (e.g. a stop signal one rank caught).

    Every rank must call it at the same point, or the run hangs.
    """
    if not is_distributed():
        return flag
    (total,) = sum_over_ranks(torch.tensor([int(flag)], device=device))
    return bool(total.item())


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's `obj` (picklable), in rank order, on rank 0; None elsewhere. Every rank must call it."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size() if cli.is_main_process() else None
    dist.gather_object(obj, out, dst=0)
    return out


@contextlib.contextmanager
def quiet_unless_main() -> Iterator[None]:
    """Silence stdout on ranks other than 0, so that a K-process run prints its messages once.

    Warnings and errors (stderr) still show on every rank.
    """
    if cli.is_main_process():
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield
