"""The seam between networks and samplers: a Denoiser ``D(x, sigma, cond=None) -> denoised``.

``x`` is in VE coordinates (``x = x0 + sigma noise``, ARCHITECTURE.md), ``sigma`` a scalar or a
per-sample tensor [B], ``cond`` the conditioning dict (``genmodels.cond``), passed through to the
network untouched; the result is the network's estimate of x0. Any net trained on any path with
any parameterization becomes one through ``NetDenoiser``.
"""

import torch
from torch import nn

from ..cond import call_net


def expand_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] or scalar -> [B, 1, 1, ...] broadcasting against x, in x's dtype and device."""
    v = torch.as_tensor(v, device=x.device)
    if v.ndim == 0:
        v = v.expand(x.shape[0])
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


class NetDenoiser(nn.Module):
    """Wraps ``net(x_t, c_noise, cond)`` trained on ``path`` predicting ``param``.

    x_t = alpha_t x (VE -> path coordinates), t = path.from_sigma(sigma).
    """

    def __init__(self, net, path, param):
        super().__init__()
        self.net, self.path, self.param = net, path, param

    def forward(self, x, sigma, cond=None):
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        t = self.path.from_sigma(sigma.to(torch.float64))
        alpha64 = self.path.alpha_from_sigma(sigma.to(torch.float64))
        alpha = expand_like(alpha64, x)
        x_t = x * alpha
        sigma_t = expand_like(alpha64 * sigma, x)
        out = call_net(self.net, self.param.scale_input(x_t, alpha=alpha, sigma=sigma_t), self.path.c_noise(t).to(x.dtype),
                       cond)
        return self.param.denoised(out, x_t=x_t, alpha=alpha, sigma=sigma_t)


def score(denoiser, x, sigma, cond=None):
    """grad_x log p_sigma(x) in VE coordinates from any Denoiser, by Tweedie's formula:
    E[x0 | x] = x + sigma^2 grad log p_sigma(x)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return (denoiser(x, sigma, cond) - x) / expand_like(sigma.to(x.device) ** 2, x)
