"""The VAE objective: the evidence lower bound (Kingma & Welling 2014, Eq. 3)

    ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || N(0, I))  <=  log p(x),

with beta-VAE's weight on the KL (Higgins et al. 2017), linear KL warm-up (Bowman et al. 2016;
Sonderby et al. 2016) and free bits (Kingma et al. 2016, IAF, Eq. 15); the importance-weighted
bound IWAE_k (Burda et al. 2016, Eq. 8) for likelihood evaluation; and active units (Burda et al.
2016, Sec. 5.2).

Pixels are stored as k / 127.5 - 1 (k = 0..255). A likelihood turns a batch into its target
(``Bernoulli``: binarized pixels; ``Gaussian``: uniformly dequantized pixels, a density; the
discretized ones: the 8-bit bins themselves) and scores the decoder's parameters against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..metrics.likelihood import BIN_WIDTH, LN2, discretized_gaussian_log_likelihood

LOG_2PI = math.log(2 * math.pi)
MIN_LOG_SCALE = -7.0  # below a tenth of the 8-bit bin width a scale only buys numerical trouble


def _split(params: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    """(means, log-scales) of decoder output stacked along dim 1."""
    mean, log_scale = params[:, :channels], params[:, channels:]
    return mean, log_scale.clamp(min=MIN_LOG_SCALE)


def _sum(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


class Bernoulli:
    """p(b|z) = prod_i Bernoulli(b_i; sigmoid(logit_i)) over binarized pixels b in {0, 1}.

    ``binarize`` "stochastic": b ~ Bernoulli(intensity), a fresh draw per training batch (dynamic
    binarization, Burda et al. 2016) and one fixed draw per image for evaluation; "threshold":
    b = [intensity > 1/2]. Data and images are b * 2 - 1 in [-1, 1]."""

    name, params_per_channel, discrete = "bernoulli", 1, True

    def __init__(self, binarize: str = "stochastic"):
        if binarize not in ("stochastic", "threshold"):
            raise ConfigError(f"vae.binarize is {binarize!r}; allowed values: stochastic, threshold")
        self.binarize = binarize

    def target(self, x: Tensor, *, generator=None) -> Tensor:
        p = (x + 1) / 2
        if self.binarize == "threshold":
            return (p > 0.5).to(x.dtype) * 2 - 1
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (u < p).to(x.dtype) * 2 - 1

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return -_sum(F.binary_cross_entropy_with_logits(params, (x + 1) / 2, reduction="none"))

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params) * 2 - 1


class Gaussian:
    """A density: p(x|z) = N(x; mu, diag sigma^2) with per-pixel learned log sigma, on uniformly
    dequantized pixels, so -log p is a bound on the discrete likelihood (Theis et al. 2016)."""

    name, params_per_channel, discrete = "gaussian", 2, False

    def target(self, x: Tensor, *, generator=None) -> Tensor:
        # metrics.likelihood.dequantize's draw, on x's device (the trainer's generators live there)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + (u - 0.5) * BIN_WIDTH

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        mean, log_scale = _split(params, x.shape[1])
        return _sum(-0.5 * ((x - mean) * torch.exp(-log_scale)).square() - log_scale - 0.5 * LOG_2PI)

    def mean(self, params: Tensor) -> Tensor:
        return params[:, :params.shape[1] // 2].clamp(-1, 1)


class DiscretizedLogistic:
    """P(x|z) of each 8-bit bin [x - w/2, x + w/2] under a logistic(mu, s), the end bins
    extended to -inf / +inf (Salimans et al. 2017, PixelCNN++, Sec. 2.1): a probability, so
    -log P is the discrete likelihood itself."""

    name, params_per_channel, discrete = "logistic", 2, True

    def target(self, x: Tensor, *, generator=None) -> Tensor:
        return x

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        mean, log_scale = _split(params, x.shape[1])
        inv_s = torch.exp(-log_scale)
        centred = x - mean
        plus, minus = inv_s * (centred + BIN_WIDTH / 2), inv_s * (centred - BIN_WIDTH / 2)
        log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus), for the bin at -1
        log_one_minus_cdf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)), for the bin at +1
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        # a bin far in a tail: the density at its centre times its width, not a difference of two
        # CDFs that both round to 0 or 1
        mid = inv_s * centred
        log_pdf_mid = mid - log_scale - 2 * F.softplus(mid) + math.log(BIN_WIDTH)
        inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
        edge = 1 - BIN_WIDTH / 2
        out = torch.where(x < -edge, log_cdf_plus, torch.where(x > edge, log_one_minus_cdf_minus, inner))
        return _sum(out)

    def mean(self, params: Tensor) -> Tensor:
        return params[:, :params.shape[1] // 2].clamp(-1, 1)


class DiscretizedGaussian(DiscretizedLogistic):
    """P(x|z) of each 8-bit bin under N(mu, sigma^2), end bins extended (Ho et al. 2020, Eq. 13)."""

    name = "discretized_gaussian"

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        mean, log_scale = _split(params, x.shape[1])
        return _sum(discretized_gaussian_log_likelihood(x, mean=mean, log_std=log_scale)).to(params.dtype)


LIKELIHOODS = {"bernoulli": Bernoulli, "gaussian": Gaussian, "logistic": DiscretizedLogistic,
               "discretized_gaussian": DiscretizedGaussian}


def get_likelihood(name: str, *, binarize: str = "stochastic"):
    if name not in LIKELIHOODS:
        raise ConfigError(f"vae.likelihood is {name!r}; allowed values: {', '.join(LIKELIHOODS)}")
    return Bernoulli(binarize) if name == "bernoulli" else LIKELIHOODS[name]()


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp logvar) || N(0, 1)) per latent unit, [B, J] (Kingma & Welling 2014, App. B)."""
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar)


def free_bits_kl(kl_units: Tensor, free_bits: float) -> Tensor:
    """Per-sample KL term [B] whose batch mean is sum_j max(free_bits, mean_batch KL_j): a unit
    whose batch-mean KL is below the floor costs the floor and gets no gradient from the KL, so
    the objective never pushes it into collapse (Kingma et al. 2016, Eq. 15)."""
    if not free_bits:
        return kl_units.sum(1)
    below = kl_units.mean(0, keepdim=True) < free_bits
    return torch.where(below, torch.full_like(kl_units, free_bits), kl_units).sum(1)


@dataclass
class VAEObjective:
    """Negative (beta-weighted) ELBO per sample, with both terms logged.

    ``kl_weight(images_seen)`` = beta * min(1, images_seen / kl_warmup_images).
    """

    likelihood: object
    beta: float = 1.0
    kl_warmup_images: int = 0
    free_bits: float = 0.0  # nats per latent unit

    def kl_weight(self, images_seen: int) -> float:
        ramp = min(1.0, images_seen / self.kl_warmup_images) if self.kl_warmup_images else 1.0
        return self.beta * ramp

    def __call__(self, net, batch, *, generator, images_seen: int = 0):
        """``net(x, generator=) -> (mu, logvar, z, params)`` (``nn.vae_nets``), one z per image."""
        x = self.likelihood.target(batch["x"], generator=generator)
        mu, logvar, _, params = net(x, generator=generator)
        recon = -self.likelihood.log_prob(params.float(), x.float())
        kl_units = gaussian_kl(mu.float(), logvar.float())
        kl = kl_units.sum(1)
        weight = self.kl_weight(images_seen)
        loss = recon + weight * free_bits_kl(kl_units, self.free_bits)
        unit_means = kl_units.detach().mean(0)
        logs = {"recon": recon, "kl": kl, "neg_elbo": recon + kl, "kl_weight": torch.tensor(weight),
                "kl_unit_min": unit_means.min(), "kl_unit_max": unit_means.max(),
                "kl_units_above_0.01": (unit_means > 0.01).float().sum()}
        return loss, logs


# ---- evaluation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class IWAEBound:
    """Per-image log-likelihood bounds in nats: ``log_px`` = IWAE_k, ``elbo`` = the mean of the
    same k log-weights (an unbiased estimate of the ELBO, IWAE_1)."""

    log_px: Tensor
    elbo: Tensor
    k: int


@torch.no_grad()
def iwae_bound(net, likelihood, x: Tensor, k: int, *, generator=None, max_batch: int = 4096) -> IWAEBound:
    """IWAE_k(x) = log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x) (Burda et al. 2016, Eq. 8),
    for targets ``x`` (already binarized / dequantized: ``likelihood.target``). The k samples
    are decoded in chunks of at most ``max_batch`` images and folded into a running logsumexp,
    so memory stays that of one chunk whatever k is."""
    if k < 1:
        raise ConfigError(f"the IWAE bound needs k >= 1 samples, got {k}")
    mu, logvar = (t.double() for t in net.encode(x))
    std = torch.exp(0.5 * logvar)
    b = len(x)
    chunk = max(1, min(k, max_batch // max(b, 1)))
    acc = torch.full((b,), -math.inf, dtype=torch.float64, device=x.device)
    total = torch.zeros(b, dtype=torch.float64, device=x.device)
    for start in range(0, k, chunk):
        c = min(chunk, k - start)
        eps = torch.randn((c, *mu.shape), generator=generator, dtype=torch.float64).to(x.device)
        z = mu + std * eps
        params = net.decode(z.reshape(c * b, -1).to(x.dtype))
        log_px_z = likelihood.log_prob(params, x.repeat(c, *[1] * (x.ndim - 1))).double().reshape(c, b)
        log_pz = (-0.5 * z.square() - 0.5 * LOG_2PI).sum(-1)
        log_qz = (-0.5 * eps.square() - 0.5 * logvar - 0.5 * LOG_2PI).sum(-1)
        log_w = log_px_z + log_pz - log_qz
        acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
        total += log_w.sum(0)
    return IWAEBound(acc - math.log(k), total / k, k)


def bits_per_dim_of(log_px: Tensor, dims: int, likelihood) -> Tensor:
    """-log2 P / D: of the discrete pixels for a discrete likelihood (Bernoulli: of the binary
    pixels), via the dequantization bound for the Gaussian density."""
    from ..metrics.likelihood import bits_per_dim

    if likelihood.discrete:
        return -torch.as_tensor(log_px, dtype=torch.float64) / (dims * LN2)
    return bits_per_dim(log_px, dims)


@torch.no_grad()
def active_units(mu: Tensor, *, threshold: float = 0.01) -> tuple[int, Tensor]:
    """(A_u count, per-unit Cov_x(E_q[z_u])): a unit is active when its posterior mean varies
    across data points, Cov > ``threshold`` (Burda et al. 2016, Sec. 5.2)."""
    variance = mu.double().var(0, unbiased=True) if len(mu) > 1 else torch.zeros(mu.shape[1], dtype=torch.float64)
    return int((variance > threshold).sum()), variance
