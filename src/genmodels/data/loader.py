"""Endless shuffled batches from an in-memory dataset, resumable from two integers.

Each epoch's order is ``torch.randperm(N)`` from a generator seeded by ``(seed, epoch)``, so the
state is just ``{"epoch", "pos"}`` and a resumed run sees exactly the batches an uninterrupted
run would. Under DDP rank r takes ``perm[r::world_size]`` of the same permutation, so ranks are
disjoint within an epoch without talking to each other.

    batches = InfiniteBatches(dataset, 128, seed=0, rank=rank, world_size=world_size)
    batch = next(batches)                # {"x": [128, C, H, W], "cond": {"y": [128]}}
    state = batches.state_dict()         # save with the checkpoint; load_state_dict on resume

``transforms``: callables ``transform(batch, generator) -> batch`` applied to each served batch in
order, each with a generator seeded by ``derive_seed(seed, epoch, pos, rank, transform.stream)``,
so what they draw (e.g. inpainting's training masks, ``genmodels.data.masking``) is the same on a
resumed run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from genmodels.errors import ConfigError

__all__ = ["InfiniteBatches", "derive_seed"]

POSTERIOR_STREAM = 3  # derive_seed(seed, epoch, pos, rank, POSTERIOR_STREAM): latent posterior draws
CAPTION_STREAM = 4  # derive_seed(seed, epoch, pos, rank, CAPTION_STREAM): which phrasing each item gets


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. ``(seed, epoch)``), for torch.Generator."""
    # SeedSequence hashes its entropy, so nearby inputs give unrelated streams
    entropy = [int(p) % 2**64 for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


class InfiniteBatches:
    """Iterator of batch dicts ``{"x": [B, ...], "cond": {...}}``: ``cond`` holds the dataset's
    ``conditions()`` (the labels as ``"y"`` when labelled, image pairs' ``"image"``, ...), and
    ``"noise"`` is added for reflow pairs.

    A dataset with a caption table (``text``, ``genmodels.data.text``) adds ``cond["text"]``:
    one of each item's phrasings, drawn from a generator seeded by (seed, epoch, position).

    A dataset with ``x_std`` (a KL autoencoder's latents) serves ``x + x_std * eps``, eps a fresh
    N(0, I) draw from a generator seeded by (seed, epoch, position): a new reparameterised draw
    of every item each epoch, the same on a resumed run.

    Holds the dataset tensors (moved once to ``device``), this rank's shard of the current
    epoch's permutation, and the position ``pos`` (items of the shard already served). The last
    incomplete batch of each epoch is dropped, and so are the ``N % world_size`` items at the
    end of each permutation, so every rank serves the same number of batches per epoch.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        transforms=(),
    ):
        _check_sharding(len(dataset.x), batch_size, rank, world_size)
        self.x = dataset.x.to(device)
        self.cond = {key: value.to(device) for key, value in dataset.conditions().items()}
        noise = getattr(dataset, "noise", None)
        self.noise = None if noise is None else noise.to(device)
        x_std = getattr(dataset, "x_std", None)
        self.x_std = None if x_std is None else x_std.to(device)
        text = getattr(dataset, "text", None)
        self.text = None if text is None else text.to(device)
        self.transforms = tuple(transforms)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shard_size = len(dataset.x) // world_size
        self.batches_per_epoch = self.shard_size // batch_size
        self.epoch = 0
        self.pos = 0
        self._shard: Tensor | None = None  # indices for (self.epoch); rebuilt when it changes
        self._shard_epoch = -1

    def __iter__(self) -> InfiniteBatches:
        return self

    def __next__(self) -> dict[str, Tensor]:
        epoch, pos = self.epoch, self.pos
        index = self._current_shard()[pos : pos + self.batch_size]
        x = self.x[index]
        if self.x_std is not None:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.pos, self.rank, POSTERIOR_STREAM))
            x = x + self.x_std[index] * torch.randn(x.shape, generator=g).to(x.device)
        cond = {key: value[index] for key, value in self.cond.items()}
        if self.text is not None:  # one of each item's captions, drawn per serving
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.pos, self.rank, CAPTION_STREAM))
            cond["text"] = self.text.lookup(index, g)
        self.pos += self.batch_size
        self._roll_over_if_exhausted()
        batch = {"x": x, "cond": cond}
        if self.noise is not None:
            batch["noise"] = self.noise[index]
        for transform in self.transforms:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, pos, self.rank, transform.stream))
            batch = transform(batch, g)
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from: ``{"epoch": int, "pos": int}`` (pos counts items)."""
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a ``state_dict()``; the following batches equal the original run's."""
        epoch, pos = int(state["epoch"]), int(state["pos"])
        if epoch < 0 or not 0 <= pos <= self.shard_size:
            raise ConfigError(
                f"batch iterator state {state} is out of range for a shard of {self.shard_size} "
                "items; was the checkpoint made with another dataset or world_size?"
            )
        self.epoch, self.pos = epoch, pos
        self._roll_over_if_exhausted()

    def _roll_over_if_exhausted(self) -> None:
        if self.pos + self.batch_size > self.shard_size:
            self.epoch += 1
            self.pos = 0

    def _current_shard(self) -> Tensor:
        if self._shard_epoch != self.epoch:
            self._shard = self._epoch_shard(self.epoch).to(self.x.device)
            self._shard_epoch = self.epoch
        return self._shard

    def _epoch_shard(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        perm = torch.randperm(len(self.x), generator=generator)
        usable = self.shard_size * self.world_size
        return perm[:usable][self.rank :: self.world_size]


def _check_sharding(n: int, batch_size: int, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in 0..world_size-1 for world_size {world_size}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if n // world_size < batch_size:
        raise ConfigError(
            f"the dataset has {n} items, {n // world_size} per rank over {world_size} rank(s), "
            f"fewer than batch_size {batch_size}; lower batch_size to at most {n // world_size}"
        )
