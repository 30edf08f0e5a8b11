"""Denoising regression for every Gaussian path and parameterization (Ho et al. 2020, Eq. 14,
generalised): draw t and noise, form x_t, regress the parameterization's target."""

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..cond import call_net, drop
from .couplings import couple


@dataclass
class DiffusionObjective:
    """``objective(net, batch, generator=)``: the batch's ``cond`` goes to ``net(x_t, c_noise,
    cond)`` untouched, except that each key in ``cond_dropout`` is replaced by ``null(key,
    value)`` (the network's null, ``genmodels.cond.null_value``) at its rate: one net is then
    both conditional and unconditional, for classifier-free guidance."""

    path: object
    param: object
    min_snr_gamma: float | None = None
    cond_dropout: dict = field(default_factory=dict)  # key -> P(key -> its null) per sample
    null: Callable | None = None  # null(key, value) -> value: needed when cond_dropout is set
    coupling: str = "independent"  # noise-data pairing (couplings.py): OT-CFM when "ot"

    def weight(self, alpha, sigma):
        """Min-SNR-gamma (Hang et al. 2023, Eq. 10): x0-error weight min(SNR, gamma), expressed on
        this parameterization's errors."""
        snr = (alpha / sigma) ** 2
        return snr.clamp(max=self.min_snr_gamma) / self.param.x0_error_scale(alpha, sigma)

    def __call__(self, net, batch, *, generator):
        x0 = batch["x"]
        t = self.path.sample_t(x0.shape[0], generator=generator, device=x0.device)
        noise = batch.get("noise")
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            noise = couple(x0, noise, self.coupling, generator=generator)
        x_t, alpha, sigma = self.path.add_noise(x0, noise, t)
        cond = drop(batch.get("cond"), self.cond_dropout, self.null, generator=generator)
        out = call_net(net, self.param.scale_input(x_t, alpha=alpha, sigma=sigma), self.path.c_noise(t).to(x0.dtype), cond)
        target = self.param.target(x0=x0, noise=noise, alpha=alpha, sigma=sigma)
        loss = (out.float() - target.float()).square().flatten(1).mean(1)
        if self.min_snr_gamma is not None:
            loss = loss * self.weight(alpha, sigma).flatten()
        return loss, {}
