"""Conditioning keys read as a vector added to the time embedding (the ``embed_cond`` slot of the
UNet and the MLP): a key whose ``genmodels.cond.COND_KEYS`` entry has an ``embed`` factory
becomes readable by any such network built with ``embed_cond=[key]``, with no change here or in
the networks. ``ScalarEmbedding`` embeds a per-sample scalar the way the noise level is embedded
(sinusoids, then a 2-layer MLP; Meng et al. 2023 embed the guidance weight w so).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genmodels.nn.layers import timestep_embedding, zero_init


class ScalarEmbedding(nn.Module):
    """A per-sample scalar ``value [B]`` -> ``[B, emb_dim]``: sinusoids of ``scale * value`` then
    Linear-SiLU-Linear. The last layer is zero-initialised, so a network that gains this input
    starts out computing exactly what it did without it (a guidance-distilled student starts as
    its teacher). A missing value reads as ``default``."""

    def __init__(self, emb_dim: int, *, scale: float = 1.0, default: float = 0.0, freq_dim: int = 64):
        super().__init__()
        self.scale, self.default, self.freq_dim = float(scale), float(default), freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, emb_dim), nn.SiLU(), zero_init(nn.Linear(emb_dim, emb_dim)))

    def forward(self, value: Tensor | None, batch: int, device) -> Tensor:
        if value is None:
            value = torch.full((batch,), self.default, device=device)
        value = torch.as_tensor(value, device=device).float().reshape(-1)
        if value.numel() == 1 and batch > 1:
            value = value.expand(batch)
        if value.shape != (batch,):
            raise ValueError(f"a scalar condition needs one value per sample ([{batch}]), got {list(value.shape)}")
        return self.mlp(timestep_embedding(self.scale * value, self.freq_dim).to(self.mlp[0].weight.dtype))


class CondEmbeddings(nn.Module):
    """The embeddings of several keys, summed: ``embeds`` maps each key to its ``embed`` factory
    (``genmodels.cond.embedders`` checks the keys and gives them)."""

    def __init__(self, embeds: dict, emb_dim: int):
        super().__init__()
        self.keys = tuple(embeds)
        self.embeds = nn.ModuleDict({k: make(emb_dim) for k, make in embeds.items()})

    def forward(self, cond: dict, batch: int, device) -> Tensor:
        return sum(self.embeds[k](cond.get(k), batch, device) for k in self.keys)
