"""Several processes, one run: PyTorch's DistributedDataParallel, launched by torchrun.

    torchrun --standalone --nproc_per_node=2 -m genmodels train mnist-ddpm --out runs/ddp

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (plus the rendezvous address); without them a run
is one process and nothing here touches torch.distributed. The backend is gloo on the CPU and
NCCL on CUDA (with gloo beside it for the small Python objects gathered at checkpoints).

The global batch is split into ``world_size * grad_accum`` *shards*: rank r runs micro-batches
``m = 0 .. grad_accum - 1`` on shards ``s = r * grad_accum + m``. A shard has its own slice of
the data and its own noise generator, both derived from the run seed and ``s`` alone, so runs
with the same shard count are the same computation: two processes equal one process with
``grad_accum=2`` up to float summation order (tested).
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from ..errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; ``Dist()`` is a single process and every method a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files or prints progress."""
        return self.rank == 0

    def shards(self, grad_accum: int) -> list[int]:
        """The shard index of each of this rank's micro-batches."""
        return [self.rank * grad_accum + m for m in range(grad_accum)]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def all_gather_objects(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled; small objects only)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def map_batches(self, n: int, batch_size: int, draw) -> torch.Tensor:
        """``draw(slice)`` for each batch of ``range(n)``, concatenated in order. Under torchrun
        rank r draws batches r, r + world_size, ... (the batches one process would draw) and
        every rank returns all of them: the result equals one process's. ``draw`` returns the
        batch on the CPU."""
        starts = range(0, n, batch_size)
        mine = {s: draw(slice(s, s + batch_size)) for s in starts[self.rank::self.world_size]}
        drawn = {s: x for part in self.all_gather_objects(mine) for s, x in part.items()}
        return torch.cat([drawn[s] for s in starts])


def from_env() -> Dist:
    """The ``Dist`` torchrun describes in the environment (a single process without it)."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; launch with torchrun "
                          "instead of setting them by hand") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"RANK {rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE {world_size})")
    return Dist(rank, world_size, local_rank)


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun started (if any); returns this rank's Dist and device.

    On CUDA each local rank takes the GPU of its index (``cuda:LOCAL_RANK``).
    """
    dist = from_env()
    if device.type == "cuda" and dist.enabled:
        if dist.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {dist.local_rank} has no GPU: this node has "
                              f"{torch.cuda.device_count()}; lower --nproc_per_node")
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if dist.enabled and not torch_dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend, rank=dist.rank, world_size=dist.world_size)
    return dist, device


def teardown(dist: Dist) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def check_batch_split(batch_size: int, dist: Dist, grad_accum: int) -> int:
    """The micro-batch size: the global ``batch_size`` over all shards, which must divide it."""
    shards = dist.world_size * grad_accum
    if batch_size % shards:
        lower = batch_size // shards * shards
        fits = [lower, lower + shards] if lower else [shards]
        raise ConfigError(
            f"train.batch_size {batch_size} (the global batch) does not split into {dist.world_size} "
            f"process(es) x train.grad_accum {grad_accum} = {shards} equal micro-batches; use "
            f"train.batch_size={' or '.join(map(str, fits))}")
    return batch_size // shards
