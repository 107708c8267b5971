"""Distributed data-parallel runs: which process this is, and the few collectives a fit needs.

A fit runs data-parallel when it finds a world of more than one process: an initialised
``torch.distributed`` process group, or a launcher's environment (``torchrun`` and
``accelerate launch`` set ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``), in which case the group is initialised here: NCCL when the fit runs on
CUDA, gloo on the CPU. Under a launcher ``device="auto"`` on CUDA means this process's
``cuda:LOCAL_RANK``.

What a data-parallel fine-tune does with it (:mod:`sktransfer.training.loop`):

* every rank holds the whole training set and draws the same seeded permutation; each
  global batch is dealt out over the ranks (rank ``r`` takes samples ``r, r+W, ...``), so
  the union of the ranks' batches is the one-process batch;
* the network is wrapped in ``DistributedDataParallel``, whose gradient all-reduce covers
  the parameters that train (frozen ones take no part); each rank's loss is scaled so the
  averaged gradient is the global batch's weighted mean's, whatever the weights;
* validation runs the whole validation set on every rank, so early stopping sees the same
  losses and stops every rank at the same epoch; the recorded training losses are
  averaged over the ranks, so ``history_`` is the same on every rank;
* at the end rank 0's weights and buffers are broadcast: the fitted estimator is the same
  everywhere, and :func:`sktransfer.save` writes on rank 0 only.
"""

from __future__ import annotations

import dataclasses
import os

import torch


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run of ``size`` processes."""

    rank: int
    size: int
    local_rank: int


def _launcher_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current_world(device=None, *, init=True) -> World | None:
    """The data-parallel world of more than one process this one belongs to, or None.

    With a launcher's environment and no process group yet, ``init`` initialises one
    (NCCL for a CUDA ``device``, else gloo).
    """
    dist = torch.distributed
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if _launcher_size() <= 1 or not init:
            return None
        cuda = device is not None and torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    size = dist.get_world_size()
    if size <= 1:
        return None
    rank = dist.get_rank()
    return World(rank=rank, size=size, local_rank=int(os.environ.get("LOCAL_RANK", rank)))


def world_device(device: torch.device) -> torch.device:
    """``cuda`` without an index under a launcher: this process's ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and _launcher_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def is_writer() -> bool:
    """Whether this process writes files a data-parallel run produces: rank 0, or any
    process outside a run."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0 if _launcher_size() > 1 else True


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks, on ``tensor``'s device (the collective runs
    where the backend needs it: NCCL on this process's GPU, gloo on the CPU)."""
    dist = torch.distributed
    if dist.get_backend() == "nccl":
        where = torch.device("cuda", torch.cuda.current_device())
    else:
        where = torch.device("cpu")
    work = tensor.detach().to(where, copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Every parameter and buffer of ``module`` set to rank ``src``'s."""
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            torch.distributed.broadcast(tensor.data, src=src)
