"""Denoising regression for every Gaussian path and parameterization (Ho et al. 2020, Eq. 14,
generalised): draw t and noise, form x_t, regress the parameterization's target."""

from dataclasses import dataclass

import torch

from .couplings import couple


@dataclass
class DiffusionObjective:
    path: object
    param: object
    min_snr_gamma: float | None = None
    label_dropout: float = 0.0  # P(label -> null_label): trains the unconditional model too (CFG)
    null_label: int | None = None
    coupling: str = "independent"  # noise-data pairing (couplings.py): OT-CFM when "ot"

    def weight(self, alpha, sigma):
        """Min-SNR-gamma (Hang et al. 2023, Eq. 10): x0-error weight min(SNR, gamma), expressed on
        this parameterization's errors."""
        snr = (alpha / sigma) ** 2
        return snr.clamp(max=self.min_snr_gamma) / self.param.x0_error_scale(alpha, sigma)

    def drop_labels(self, y, generator):
        """Ho & Salimans 2022, Algorithm 1: replace each label by the null class with p_uncond."""
        if not self.label_dropout:
            return y
        drop = torch.rand(y.shape, generator=generator, device=y.device) < self.label_dropout
        return torch.where(drop, torch.full_like(y, self.null_label), y)

    def __call__(self, net, batch, *, generator):
        x0 = batch["x"]
        t = self.path.sample_t(x0.shape[0], generator=generator, device=x0.device)
        noise = batch.get("noise")
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            noise = couple(x0, noise, self.coupling, generator=generator)
        x_t, alpha, sigma = self.path.add_noise(x0, noise, t)
        cond = {"y": self.drop_labels(batch["y"], generator)} if "y" in batch else {}
        out = net(self.param.scale_input(x_t, alpha=alpha, sigma=sigma), self.path.c_noise(t).to(x0.dtype), **cond)
        target = self.param.target(x0=x0, noise=noise, alpha=alpha, sigma=sigma)
        loss = (out.float() - target.float()).square().flatten(1).mean(1)
        if self.min_snr_gamma is not None:
            loss = loss * self.weight(alpha, sigma).flatten()
        return loss, {}
