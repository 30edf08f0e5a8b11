"""Exponential moving average of weights with the half-life counted in training images (EDM,
Karras et al. 2022, Appendix F.1), so it does not change when the batch size does."""

import copy

import torch
from torch import nn


class EMA:
    """``module`` is a frozen copy updated by ``update``.

    beta = 0.5 ** (batch_images / halflife); with ``rampup`` the half-life is capped at
    rampup * images_seen, so in a short run the average is not dominated by the random init.
    """

    def __init__(self, source: nn.Module, *, halflife_images: float, rampup: float | None = None):
        self.module = copy.deepcopy(source).eval().requires_grad_(False)
        self.halflife_images, self.rampup = halflife_images, rampup

    def beta(self, *, images_seen: int, batch_images: int) -> float:
        halflife = self.halflife_images
        if self.rampup is not None:
            halflife = min(halflife, images_seen * self.rampup)
        return 0.5 ** (batch_images / max(halflife, 1e-8))

    @torch.no_grad()
    def update(self, source: nn.Module, *, images_seen: int, batch_images: int) -> None:
        beta = self.beta(images_seen=images_seen, batch_images=batch_images)
        ema_params = list(self.module.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in source.parameters()], 1 - beta)
        for b_ema, b in zip(self.module.buffers(), source.buffers()):
            b_ema.copy_(b)
