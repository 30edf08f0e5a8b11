"""Vector quantizer of VQ-VAE (van den Oord et al. 2017) as used by VQGAN (Esser et al. 2021):
each encoder output vector ``z`` (one per position of ``z [B, D, H, W]``) is replaced by its
nearest codebook entry ``e_k``, ``k = argmin_k ||z - e_k||^2``.

Gradients pass the quantization by the straight-through estimator, ``z_q = z + sg(q - z)``
(forward value ``q``, gradient identity to ``z``; ``sg`` is stop-gradient). The loss is the commitment term
``beta ||z - sg(q)||^2`` plus, without EMA, the codebook term ``||sg(z) - q||^2`` (VQ-VAE eq. 3).
With ``ema=True`` the codebook is not learned by gradient but is an exponential moving average
of the vectors assigned to each code (VQ-VAE appendix A.1; Razavi et al. 2019, VQ-VAE-2): online
k-means, which is faster and more stable than the codebook loss.

Codes that no vector picks for ``dead_after`` training forwards are restarted at a random encoder
output of the current batch (as in Jukebox, Dhariwal et al. 2020): a code that starts far from
the data would otherwise never move, and a codebook with few live codes wastes its capacity.

State: ``embedding [K, D]`` (a parameter without EMA, a buffer with it), the EMA statistics
``cluster_size [K]`` (``N_k``) and ``embed_sum [K, D]`` (``m_k``), the per-code count of training
forwards since last use ``unused_steps [K]``, and the usage counts ``usage_count [K]`` since
``reset_usage()``. They change only in training mode; an eval forward is a pure function. Under
torch.distributed every rank sees the counts and sums of all ranks, so the state stays identical.
"""

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Quantized:
    """``z_q [B, D, H, W]`` (straight-through), ``loss [B]`` (per sample), ``indices [B, H, W]``
    (int64) and ``perplexity`` (scalar: exp of the entropy of this batch's code histogram; K when
    all codes are used equally, 1 when one code takes everything)."""

    z_q: Tensor
    loss: Tensor
    indices: Tensor
    perplexity: Tensor


def _distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer with EMA codebook and dead-code restart; see the module docstring.

    The codebook starts uniform in ``(-1/K, 1/K)``, as in VQ-VAE/VQGAN; with EMA the statistics
    start consistent with it (``N_k = 1``, ``m_k = e_k``), so a code nobody picks stays put
    (apart from the Laplace smoothing) instead of being divided by a zero count. A restarted code
    is reset the same way: ``e_k = m_k = v`` and ``N_k = 1`` for the chosen batch vector ``v``.
    """

    def __init__(self, *, num_codes: int, dim: int, beta: float = 0.25, ema: bool = True,
                 decay: float = 0.99, eps: float = 1e-5, restart_dead: bool = True, dead_after: int = 100):
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"num_codes {num_codes} and dim {dim} must be positive")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay {decay} must be in [0, 1); 0.99 is the usual choice")
        if dead_after < 1:
            raise ValueError(f"dead_after {dead_after} must be at least 1 training forward")
        self.num_codes, self.dim, self.beta = num_codes, dim, beta
        self.ema, self.decay, self.eps = ema, decay, eps
        self.restart_dead, self.dead_after = restart_dead, dead_after
        embedding = torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema:
            self.register_buffer("embedding", embedding)
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_sum", embedding.clone())
        else:
            self.embedding = nn.Parameter(embedding)
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("usage_count", torch.zeros(num_codes, dtype=torch.long))

    def forward(self, z: Tensor) -> Quantized:
        B, D, H, W = z.shape
        if D != self.dim:
            raise ValueError(f"z has {D} channels but the codebook has dim {self.dim}; "
                             f"z must be [B, {self.dim}, H, W]")
        flat = z.detach().movedim(1, -1).reshape(-1, D)  # [BHW, D]; free for channels_last z
        # Distances in float32 even under autocast: in bf16 the ||z||^2 and ||e||^2 terms swamp
        # the cross term and the argmin becomes noise.
        with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
            f, e = flat.float(), self.embedding.detach().float()
            dist = torch.addmm(f.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1), f, e.t(), alpha=-2)
            indices = dist.argmin(1)
            counts = torch.bincount(indices, minlength=self.num_codes).float()
        # The codes as they were when chosen: the training-mode update below comes after.
        q = F.embedding(indices, self.embedding).view(B, H, W, D).movedim(-1, 1).float()
        if not z.is_contiguous(memory_format=torch.channels_last):
            q = q.contiguous()
        z32 = z.float()
        loss = self.beta * (z32 - q.detach()).pow(2).flatten(1).mean(1)  # commitment
        if not self.ema:
            loss = loss + (z32.detach() - q).pow(2).flatten(1).mean(1)  # codebook term
        # Straight-through, written sg(q) + (z - sg(z)) rather than z + sg(q - z): the same
        # gradient (identity to z, none to the codebook) but the forward value is exactly q.
        z_q = q.detach().to(z.dtype) + (z - z.detach())
        p = counts / counts.sum()
        perplexity = torch.special.entr(p).sum().exp()
        if self.training:
            self._update(f, indices, counts)
        return Quantized(z_q, loss, indices.view(B, H, W), perplexity)

    @torch.no_grad()
    def _update(self, f: Tensor, indices: Tensor, counts: Tensor) -> None:
        """One training step of the codebook state from this batch's ``f [N, D]`` (float32)."""
        counts = counts.clone()
        sums = torch.zeros(self.num_codes, self.dim, device=f.device).index_add_(0, indices, f)
        if _distributed():  # every rank applies the same update from the global batch
            torch_dist.all_reduce(counts)
            torch_dist.all_reduce(sums)
        if self.ema:
            # N_k <- d N_k + (1 - d) n_k,  m_k <- d m_k + (1 - d) sum_{z -> k} z  (VQ-VAE A.1)
            self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            # Laplace smoothing of N_k (as in Sonnet's VectorQuantizerEMA): keeps e_k = m_k / N_k
            # finite for codes whose count has decayed towards zero; the total n is unchanged.
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
            self.embedding.copy_(self.embed_sum / smoothed[:, None])
        used = counts > 0
        self.usage_count.add_(counts.long())
        self.unused_steps.add_(1).masked_fill_(used, 0)
        dead = (self.unused_steps >= self.dead_after).nonzero().squeeze(1)
        if self.restart_dead and len(dead):
            self._restart(dead, f)

    def _restart(self, dead: Tensor, f: Tensor) -> None:
        """Move the ``dead`` codes onto random vectors of this batch, drawn on rank 0 with the
        global RNG and broadcast, so every rank restarts them at the same place."""
        pick = torch.randint(len(f), (len(dead),), device=f.device)
        vectors = f[pick].to(self.embedding.dtype)
        if _distributed():
            torch_dist.broadcast(vectors, src=0)
        self.embedding.data[dead] = vectors
        if self.ema:
            self.embed_sum[dead] = vectors
            self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0

    def lookup(self, indices: Tensor) -> Tensor:
        """The codes of ``indices [B, H, W]`` as ``[B, D, H, W]`` (decoding from tokens)."""
        return F.embedding(indices, self.embedding).movedim(-1, 1)

    def usage(self) -> float:
        """Fraction of codes used at least once in training forwards since ``reset_usage()``."""
        return (self.usage_count > 0).float().mean().item()

    def reset_usage(self) -> None:
        self.usage_count.zero_()

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, ema={self.ema}, "
                f"decay={self.decay}, restart_dead={self.restart_dead}, dead_after={self.dead_after}")
