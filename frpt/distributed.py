"""Data-parallel helpers: one process per device under ``torchrun``, or the plain single process.

A process group exists only when torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK) announce more than one
process; a single process never creates one, and every helper here is then the identity, so its code path is the
one it always was. gloo on CPU, NCCL on CUDA. Rank 0 is the only process that writes files.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, Sampler

from .errors import ConfigError

ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def launched_world_size() -> int:
    """How many processes torchrun started (1 without torchrun); readable before any process group exists."""
    if not all(k in os.environ for k in ENV):
        return 1
    try:
        n = int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; launch with torchrun.") from None
    return max(n, 1)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def is_main() -> bool:
    """Whether this process writes files, logs and progress bars (rank 0, or the single process)."""
    return rank() == 0


def device_for(device: str | torch.device) -> torch.device:
    """This process's device: under torchrun every ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process)."""
    device = torch.device(device)
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def init(device: str | torch.device = "cpu") -> None:
    """Join torchrun's process group: NCCL when ``device`` is CUDA, else gloo."""
    if not dist.is_available():
        raise ConfigError("This PyTorch build has no torch.distributed; run one process, without torchrun.")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if cuda else "gloo")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device: str | torch.device = "cpu") -> Iterator[None]:
    """The process group for the duration of a command, when torchrun launched more than one process."""
    started = launched_world_size() > 1 and not (dist.is_available() and dist.is_initialized())
    if started:
        init(device)
    try:
        yield
    finally:
        if started:
            cleanup()


def barrier() -> None:
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[local_rank()])
        else:
            dist.barrier()


def shard_range(n: int) -> range:
    """This process's contiguous block of ``range(n)``; blocks in rank order tile it, sizes differ by at most 1."""
    r, w = rank(), world_size()
    return range(r * n // w, (r + 1) * n // w)


def _comm_device() -> torch.device:
    return torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_in_order(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` (same trailing shape, any length) concatenated along dim 0 in rank order, on
    every process: with :func:`shard_range` blocks this restores dataset order."""
    if not is_distributed():
        return tensor
    dev, w = _comm_device(), world_size()
    local = tensor.to(dev).contiguous()
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(w)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=dev))
    counts = [int(s.item()) for s in sizes]
    padded = torch.cat([local, local.new_zeros((max(counts) - local.shape[0], *local.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(tensor.device)


def gather_objects(obj: Any) -> list[Any]:
    """Every process's picklable ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (what rank 0 computed, e.g. metrics, without recomputing it)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over processes (a copy; the input is left alone)."""
    if not is_distributed():
        return tensor
    out = tensor.to(_comm_device()).clone()
    dist.all_reduce(out)
    return out.to(tensor.device)


class ShardedBatchSampler(Sampler[list[int]]):
    """This process's slice of each global batch of ``batches``: rank r takes items [r*k, (r+1)*k), k = batch /
    world size. Together the processes see exactly the batches one process would draw from the same sampler (and
    its seeded generator, re-seeded every epoch, which keeps ``--resume`` exact)."""

    def __init__(self, batches: BatchSampler, rank: int, world_size: int):
        if batches.batch_size % world_size or not batches.drop_last:
            raise ConfigError(f"A global batch of {batches.batch_size} does not split evenly over {world_size} "
                              f"processes; use a --batch-size that is a multiple of {world_size}.")
        self.batches, self.rank, self.world_size = batches, rank, world_size
        self.per_process = batches.batch_size // world_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        k = self.per_process
        for batch in self.batches:
            yield batch[self.rank * k:(self.rank + 1) * k]


# ------------------------------------------------------------------------------------------ global BatchNorm

class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over processes: the gradient of a sum shared by all processes is the sum of theirs."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = grad.clone()
        dist.all_reduce(out)
        return out


def _global_batch_norm(bn: torch.nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Training-mode batch norm over the samples of all processes (two passes, at least float32), with running
    statistics."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    n = all_reduce_sum(torch.tensor(float(xf.numel() // xf.shape[1]), dtype=torch.float64, device=x.device)).item()
    mean = _AllReduceSum.apply(xf.sum(dims)) / n
    centred = xf - mean.view(shape)
    var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
    y = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - m).add_(mean.detach().to(bn.running_mean.dtype), alpha=m)
            unbiased = var.detach() * (n / max(n - 1, 1))
            bn.running_var.mul_(1 - m).add_(unbiased.to(bn.running_var.dtype), alpha=m)
    return y.to(x.dtype)


class _GlobalBatchNorm:
    """Mixed into a BatchNorm module's class by :func:`sync_batchnorm`: in training mode under a process group it
    normalises with the statistics of the global batch; otherwise it is the module it was."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        y = _global_batch_norm(self, x)
        from timm.layers import BatchNormAct2d

        if isinstance(self, BatchNormAct2d):  # timm fuses dropout and the activation into its BatchNorm
            y = self.act(self.drop(y))
        return y


_GLOBAL_CLASSES: dict[type, type] = {}


def sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Make every BatchNorm of ``model`` use global-batch statistics while training under a process group, so N
    processes with per-process batch B/N train like one process with batch B. torch's SyncBatchNorm needs a GPU;
    this works on gloo too. Classes are swapped in place: parameters, buffers and state-dict keys stay the same."""
    for module in model.modules():
        cls = type(module)
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, _GlobalBatchNorm):
            if cls not in _GLOBAL_CLASSES:
                _GLOBAL_CLASSES[cls] = type(f"Global{cls.__name__}", (_GlobalBatchNorm, cls), {})
            module.__class__ = _GLOBAL_CLASSES[cls]
    return model


__all__ = ["launched_world_size", "is_distributed", "world_size", "rank", "local_rank", "is_main", "device_for",
           "init", "cleanup", "session", "barrier", "shard_range", "gather_in_order", "gather_objects",
           "broadcast_object", "all_reduce_sum", "ShardedBatchSampler", "sync_batchnorm"]
