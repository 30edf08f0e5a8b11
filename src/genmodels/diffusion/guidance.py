"""Guidance as Denoiser wrappers: each takes a Denoiser ``D(x, sigma, cond)`` and is one, so
every sampler runs guided without knowing it.

- ``CFGDenoiser``: classifier-free guidance (Ho & Salimans 2022), x0 = x0_u + w (x0_c - x0_u), on
  any subset of the conditioning keys (the unconditional half nulls those keys and keeps the
  rest: text guided, control image not), cond and uncond in one batched forward, optionally only
  inside a sigma interval (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval").
- ``DynamicThresholding``: Imagen's percentile clipping of x0 (Saharia et al. 2022, Sec. 2.3).
- ``ClassifierGuidance``: Dhariwal & Nichol 2021 with a noise-aware classifier, in VE
  coordinates: D'(x) = D(x) + w sigma^2 grad_x log p(y | x, sigma).

Guidance scales follow the CFG paper's convention used by diffusers: w = 1 is the conditional
model, w = 0 the unconditional one, w > 1 extrapolates away from the unconditional.
"""

import torch
from torch import nn

from ..cond import as_cond, cat, select
from .denoiser import expand_like


class CFGDenoiser(nn.Module):
    """Classifier-free guidance around a conditional Denoiser.

    ``uncond(cond) -> cond`` gives the unconditional half: ``genmodels.cond.nulled(net, keys)``
    nulls ``keys`` (the network's null class / null text) and keeps the other keys; a dict is
    merged over ``cond`` instead (e.g. a negative prompt's ``text``). ``interval=(sigma_lo,
    sigma_hi)`` applies the guidance only for sigma in that range; outside it the conditional
    model runs alone (one forward at batch B instead of 2B). ``scale`` is one float, or a tensor
    [B] of one scale per sample (guidance distillation's teacher, trained over a range of w).
    """

    def __init__(self, denoiser, scale, uncond, *, interval=None):
        super().__init__()
        self.denoiser = denoiser
        self.scale = scale if isinstance(scale, torch.Tensor) and scale.ndim > 0 else float(scale)
        self.uncond = uncond if callable(uncond) else (lambda cond: {**cond, **uncond})
        self.interval = None if interval is None else (float(interval[0]), float(interval[1]))
        self._cond = self._both = None  # the last batch's cond, and it beside its uncond

    def active(self, sigma) -> bool:
        if isinstance(self.scale, float) and self.scale == 1.0:
            return False
        if self.interval is None:
            return True
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        return self.interval[0] <= s <= self.interval[1]

    def forward(self, x, sigma, cond=None):
        cond = as_cond(cond)
        if not self.active(sigma):
            return self.denoiser(x, sigma, cond)
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma2 = torch.cat([sigma.expand(x.shape[0])] * 2) if sigma.ndim == 0 else torch.cat([sigma, sigma])
        if cond is not self._cond:  # samplers pass one dict for all steps of a batch: build the pair once
            self._cond, self._both = cond, cat([cond, self.uncond(cond)])
        both = self.denoiser(torch.cat([x, x]), sigma2, self._both)
        conditional, unconditional = both.chunk(2)
        scale = self.scale if isinstance(self.scale, float) else expand_like(self.scale, conditional)
        return unconditional + scale * (conditional - unconditional)


class DynamicThresholding(nn.Module):
    """Clip x0 per sample to [-s, s] and divide by s, with s the ``percentile`` of |x0|, floored
    at 1 (so images already in [-1, 1] are untouched)."""

    def __init__(self, denoiser, percentile: float = 0.995):
        super().__init__()
        if not 0 < percentile <= 1:
            raise ValueError(f"dynamic thresholding percentile must lie in (0, 1], got {percentile}")
        self.denoiser, self.percentile = denoiser, float(percentile)

    def forward(self, x, sigma, cond=None):
        x0 = self.denoiser(x, sigma, cond)
        s = torch.quantile(x0.detach().flatten(1).abs().float(), self.percentile, dim=1).clamp(min=1)
        s = expand_like(s, x0)
        return x0.clamp(-s, s) / s


class ClassifierGuidance(nn.Module):
    """Shift x0 by w sigma^2 grad_x log p(y | x, sigma) with ``classifier(x_ve, sigma) -> logits``
    (a noise-aware classifier that takes the VE state, like a Denoiser). The target classes are
    ``cond["y"]``; the denoiser gets the keys of ``cond`` in ``denoiser_keys`` (its network's
    ``cond_keys``: an unconditional model reads no ``y``), all of them when None."""

    def __init__(self, denoiser, classifier, scale: float, *, denoiser_keys=None):
        super().__init__()
        self.denoiser, self.classifier, self.scale = denoiser, classifier, float(scale)
        self.denoiser_keys = None if denoiser_keys is None else frozenset(denoiser_keys)

    def forward(self, x, sigma, cond=None):
        cond = as_cond(cond)
        y = cond.get("y")
        if y is None:
            raise ValueError("classifier guidance needs class labels: cond['y']")
        x0 = self.denoiser(x, sigma, cond if self.denoiser_keys is None else select(cond, self.denoiser_keys))
        # Samplers run under inference_mode; the gradient needs a normal tensor and autograd.
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            sigma_in = torch.as_tensor(sigma).clone()  # an inference tensor cannot enter the graph
            log_p = torch.log_softmax(self.classifier(x_in, sigma_in).float(), dim=1)
            picked = log_p.gather(1, y.reshape(-1, 1).long().clone()).sum()
            grad = torch.autograd.grad(picked, x_in)[0]
        sigma = expand_like(torch.as_tensor(sigma, device=x.device), x)
        return x0 + self.scale * sigma**2 * grad.to(x0.dtype)


class NoisyClassifierOnVE(nn.Module):
    """A noise-aware classifier trained on x_t (the path's coordinates, conditioned on c_noise)
    called as ClassifierGuidance calls it: on the VE state x and its sigma."""

    def __init__(self, net, path):
        super().__init__()
        self.net, self.path = net, path

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        t = self.path.from_sigma(sigma.to(torch.float64))
        alpha = expand_like(self.path.alpha_from_sigma(sigma.to(torch.float64)), x)
        return self.net(x * alpha, self.path.c_noise(t).to(x.dtype))
