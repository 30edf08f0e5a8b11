"""Denoiser body for 2-D (or any low-dimensional) toy data.

``MLP(x, c_noise, cond)`` maps points ``x [B, dim]``, noise-level conditioning ``c_noise [B]`` and
a conditioning dict (``cond["y"]`` when built with ``num_classes``; the ``embed_cond`` keys, e.g.
a guidance-distilled net's ``guidance``) to ``[B, dim]``; the parameterization decides what the
output means.
"""

from torch import Tensor, nn
import torch.nn.functional as F

from genmodels.cond import check_reads, embedders
from genmodels.nn.cond_embed import CondEmbeddings
from genmodels.errors import ConfigError
from genmodels.nn.layers import timestep_embedding, zero_init
from genmodels.nn.unet import _class_embedding, _per_sample


class MLP(nn.Module):
    """``depth`` hidden layers of width ``hidden`` with SiLU. The sinusoidal noise-level embedding
    (and the class embedding, ``num_classes + 1`` rows with the last one the null class) is added
    to every hidden layer, not only the first, so conditioning cannot be washed out with depth.
    The output layer is zero-initialised: the net starts by predicting 0.
    """

    def __init__(self, *, dim: int = 2, hidden: int = 256, depth: int = 3,
                 num_classes: int | None = None, embed_cond=()):
        super().__init__()
        for name, value in [("dim", dim), ("hidden", hidden), ("depth", depth)]:
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"MLP {name} must be a positive integer, got {value!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ConfigError(f"num_classes must be a positive integer or None, got {num_classes!r}")
        self.dim, self.hidden, self.num_classes = dim, hidden, num_classes
        embeds = embedders(tuple(embed_cond), where="model.embed_cond")
        self.cond_keys = frozenset((["y"] if num_classes is not None else []) + list(embeds))
        self.time_embed = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_embed = None if num_classes is None else nn.Embedding(num_classes + 1, hidden)
        if embeds:  # absent otherwise: the plain net's weight names are unchanged
            self.cond_embed = CondEmbeddings(embeds, hidden)
        self.layers = nn.ModuleList(
            [nn.Linear(dim, hidden)] + [nn.Linear(hidden, hidden) for _ in range(depth - 1)])
        # One projection per layer of the shared embedding, computed in a single matmul.
        self.emb_proj = nn.Linear(hidden, depth * hidden)
        self.out = zero_init(nn.Linear(hidden, dim))

    def forward(self, x: Tensor, c_noise: Tensor, cond: dict | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expected input of shape [B, {self.dim}], got {list(x.shape)}; "
                             f"check the network's dim against the data")
        cond = check_reads(cond, self.cond_keys, who="the MLP (num_classes)")
        emb = self.time_embed(timestep_embedding(_per_sample(c_noise, x.shape[0]), self.hidden))
        emb = emb + _class_embedding(self.class_embed, self.num_classes, cond.get("y"), x.shape[0], x.device)
        if hasattr(self, "cond_embed"):
            emb = emb + self.cond_embed(cond, x.shape[0], x.device)
        h = x
        for layer, e in zip(self.layers, self.emb_proj(F.silu(emb)).chunk(len(self.layers), dim=1)):
            h = F.silu(layer(h) + e)
        return self.out(h)
