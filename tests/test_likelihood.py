"""Likelihoods against closed forms: the PF-ODE on Gaussian data with its exact denoiser, the
DDPM bound against a Monte Carlo estimate over forward trajectories, the decoder against scipy."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from genmodels.diffusion import DiscreteDDPM
from genmodels.metrics.likelihood import (BIN_WIDTH, bits_per_dim, ddpm_vlb,
                                          discretized_gaussian_log_likelihood, ode_log_likelihood)


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))


def gaussian_log_prob(x, mu, cov):
    return torch.from_numpy(stats.multivariate_normal(mu.numpy(), cov.numpy()).logpdf(x.numpy())).reshape(len(x))


class GaussianDenoiser(torch.nn.Module):
    """The exact denoiser of N(mu, S) data, E[x0 | x] = mu + S (S + sigma^2 I)^-1 (x - mu). Its
    (frozen) parameters put it on a device; it records the devices of the tensors it is given."""

    def __init__(self, mu, cov):
        super().__init__()
        self.mu = torch.nn.Parameter(mu.clone(), requires_grad=False)
        self.cov = torch.nn.Parameter(cov.clone(), requires_grad=False)
        self.seen = set()

    def forward(self, x, sigma, cond=None):
        self.seen |= {x.device, torch.as_tensor(sigma).device}
        eye = torch.eye(len(self.mu), dtype=x.dtype, device=x.device)
        gain = self.cov @ torch.linalg.inv(self.cov + sigma**2 * eye)
        return self.mu + (x - self.mu) @ gain.T


def gaussian_ode_case(mu, cov, n=6, s_min=1e-2, s_max=50.0):
    """(denoiser, x, ode_log_likelihood's keywords, exact log p at sigma_min): p_sigma is
    N(mu, S + sigma^2 I), so the density at sigma_min and the prior at sigma_max are known."""
    eye = torch.eye(len(mu), dtype=torch.float64)
    x = mu + torch.randn(n, len(mu), dtype=torch.float64, generator=torch.Generator().manual_seed(0)) \
        @ torch.linalg.cholesky(cov).T
    kwargs = dict(sigma_min=s_min, sigma_max=s_max,
                  prior_log_prob=lambda z: gaussian_log_prob(z, mu, cov + s_max**2 * eye))
    return GaussianDenoiser(mu, cov), x, kwargs, gaussian_log_prob(x, mu, cov + s_min**2 * eye)


MU2 = torch.tensor([0.3, -0.2], dtype=torch.float64)
COV2 = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)


def test_ode_likelihood_of_gaussian_data_matches_the_closed_form():
    """Data N(mu, S) with its exact denoiser; the exact trace (2-D, full covariance) must
    reproduce log p at sigma_min."""
    denoiser, x, kwargs, expected = gaussian_ode_case(MU2, COV2)
    result = ode_log_likelihood(denoiser, x, **kwargs)
    torch.testing.assert_close(result.log_px, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("divergence,cov", [("exact", COV2), ("hutchinson", torch.diag(COV2.diagonal()))],
                         ids=["exact", "hutchinson"])
def test_ode_likelihood_runs_on_the_denoisers_device(device, divergence, cov):
    """The denoiser on ``device``, x on the CPU: every tensor the denoiser is given is on its
    device, the result comes back on the CPU and is the closed form (off the CPU: also the CPU's
    result). A diagonal covariance for Hutchinson, where one Rademacher probe is exact."""
    denoiser, x, kwargs, expected = gaussian_ode_case(MU2, cov)
    result = ode_log_likelihood(denoiser.to(device), x, divergence=divergence, **kwargs)
    assert {d.type for d in denoiser.seen} == {device}
    assert result.log_px.device.type == "cpu" and result.prior_log_p.device.type == "cpu"
    torch.testing.assert_close(result.log_px, expected, rtol=0, atol=1e-4)
    if device != "cpu":
        on_cpu = ode_log_likelihood(denoiser.cpu(), x, divergence=divergence, **kwargs)
        torch.testing.assert_close(result.log_px, on_cpu.log_px, rtol=0, atol=1e-6)


def test_ode_likelihood_with_hutchinson_trace_in_high_dimension():
    """50-D Gaussian data with a diagonal covariance (a Rademacher probe is then exact), the
    default Gaussian prior; error only from the prior's mismatch at a large sigma_max."""
    d = 50
    scales = torch.linspace(0.2, 1.0, d, dtype=torch.float64)

    def denoiser(x, sigma, cond=None):
        return x * scales**2 / (scales**2 + float(sigma) ** 2)

    x = torch.randn(4, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * scales
    s_min, s_max = 1e-2, 1e3
    result = ode_log_likelihood(denoiser, x, sigma_min=s_min, sigma_max=s_max, prior_std=s_max,
                                divergence="hutchinson")
    var = scales**2 + s_min**2
    expected = (-0.5 * x.square() / var - 0.5 * torch.log(2 * math.pi * var)).sum(1)
    torch.testing.assert_close(result.log_px, expected, rtol=0, atol=2e-3)


def test_bits_per_dim_of_the_uniform_density_is_eight():
    d = 784
    log_px = torch.tensor(-d * math.log(2 + BIN_WIDTH), dtype=torch.float64)  # uniform over 256 bins
    assert bits_per_dim(log_px, d).item() == pytest.approx(8.0, abs=1e-12)


def test_discretized_gaussian_matches_scipy_and_sums_to_one():
    k = torch.arange(256, dtype=torch.float64)
    x = k / 127.5 - 1
    mean, std = torch.tensor(0.13, dtype=torch.float64), 0.2
    logp = discretized_gaussian_log_likelihood(x, mean=mean, log_std=torch.tensor(math.log(std)))
    edges = np.concatenate([[-np.inf], (x[:-1] + BIN_WIDTH / 2).numpy(), [np.inf]])
    expected = np.diff(stats.norm(0.13, std).cdf(edges))
    np.testing.assert_allclose(logp.exp().numpy(), expected, rtol=1e-6, atol=1e-12)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def _toy_denoiser(x, sigma, cond=None):
    """Not the exact denoiser of anything: the bound must hold for any model."""
    return torch.tanh(0.7 * x) / (1 + 0.3 * float(sigma))


def test_ddpm_bound_equals_a_monte_carlo_estimate_over_forward_trajectories():
    """E_q[log q(x_1..x_T | x_0) - log p(x_0..x_T)] by sampling the forward Markov chain (Ho et
    al. 2020, Eq. 3) must equal Eq. 5's sum of closed-form KLs that ddpm_vlb computes."""
    path = DiscreteDDPM(schedule="linear", timesteps=8, beta_start=0.05, beta_end=0.6)
    betas, abar = path.betas.numpy(), path.alphas_cumprod.numpy()
    x0 = torch.tensor([[0.0], [100.0], [255.0]], dtype=torch.float64) / 127.5 - 1
    # ddpm_vlb draws one x_t per step and image: a one-sample estimate, so average many
    repeats = 100_000
    bound = ddpm_vlb(_toy_denoiser, path, x0.repeat_interleave(repeats, 0),
                     generator=torch.Generator().manual_seed(0)).nats.view(3, repeats).numpy()

    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    rng = np.random.default_rng(0)
    m = 400_000
    for i, value in enumerate(x0[:, 0].numpy()):
        log_q = np.zeros(m)
        log_p = np.zeros(m)
        xs = []
        prev = np.full(m, value)
        for n in range(8):  # forward chain q(x_n | x_{n-1})
            xn = np.sqrt(1 - betas[n]) * prev + np.sqrt(betas[n]) * rng.standard_normal(m)
            log_q += stats.norm(np.sqrt(1 - betas[n]) * prev, np.sqrt(betas[n])).logpdf(xn)
            xs.append(xn)
            prev = xn
        log_p += stats.norm(0, 1).logpdf(xs[-1])

        def x0_hat(n):
            out = _toy_denoiser(torch.from_numpy(xs[n] / np.sqrt(abar[n])), path.sigmas[n].item())
            return out.clamp(-1, 1).numpy()

        for n in range(1, 8):  # reverse model p(x_{n-1} | x_n): Ho et al. Eq. 7 mean, beta-tilde
            mean = (np.sqrt(abar_prev[n]) * betas[n] * x0_hat(n)
                    + np.sqrt(1 - betas[n]) * (1 - abar_prev[n]) * xs[n]) / (1 - abar[n])
            log_p += stats.norm(mean, np.sqrt(post_var[n])).logpdf(xs[n - 1])
        decoder = stats.norm(x0_hat(0), np.sqrt(post_var[1]))
        lo = -np.inf if value < -0.99 else value - BIN_WIDTH / 2
        hi = np.inf if value > 0.99 else value + BIN_WIDTH / 2
        log_p += np.log(decoder.cdf(hi) - decoder.cdf(lo))
        diff = log_q - log_p
        stderr = np.sqrt(diff.var() / m + bound[i].var() / repeats)
        assert abs(diff.mean() - bound[i].mean()) < 4 * stderr, (i, diff.mean(), bound[i].mean(), stderr)


class ToyNet(torch.nn.Module):
    """_toy_denoiser with its gain as a parameter: a module that lives on a device."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64), requires_grad=False)
        self.seen = set()

    def forward(self, x, sigma, cond=None):
        self.seen |= {x.device, sigma.device}
        return torch.tanh(self.gain * x) / (1 + 0.3 * sigma)


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("steps", [None, 3])
def test_ddpm_bound_is_the_same_on_the_denoisers_device(device, steps):
    """Noise and step subsets are drawn from the CPU generator whatever the device, so the bound
    of the same images equals the CPU's (whose value the Monte Carlo test checks)."""
    path = DiscreteDDPM(schedule="linear", timesteps=8, beta_start=0.05, beta_end=0.6)
    x0 = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    on_cpu = ddpm_vlb(ToyNet(), path, x0, steps=steps, generator=torch.Generator().manual_seed(1))
    net = ToyNet().to(device)
    on_device = ddpm_vlb(net, path, x0, steps=steps, generator=torch.Generator().manual_seed(1))
    assert {d.type for d in net.seen} == {device}
    assert on_device.nats.device.type == "cpu"
    torch.testing.assert_close(on_device.nats, on_cpu.nats, rtol=1e-9, atol=1e-9)
    assert on_device.diffusion == pytest.approx(on_cpu.diffusion, rel=1e-9)


def test_ddpm_bound_step_subset_is_unbiased():
    path = DiscreteDDPM(schedule="linear", timesteps=8, beta_start=0.05, beta_end=0.6)
    x0 = torch.tensor([[0.2, -0.6]], dtype=torch.float64)
    full = torch.stack([ddpm_vlb(_toy_denoiser, path, x0, generator=torch.Generator().manual_seed(s)).nats
                        for s in range(400)])
    part = torch.stack([ddpm_vlb(_toy_denoiser, path, x0, steps=2, generator=torch.Generator().manual_seed(s)).nats
                        for s in range(400)])
    stderr = (part.var() / len(part) + full.var() / len(full)).sqrt()
    assert abs(part.mean() - full.mean()) < 4 * stderr


@pytest.mark.slow
def test_ddpm_bound_on_mnist_is_finite_and_falls_with_training(tmp_path, tiny_mnist_overrides):
    from genmodels.config import load_config
    from genmodels.data import load_dataset
    from genmodels import load
    from genmodels.train.run import train

    x = load_dataset("mnist", split="test").x[:8].double()
    bounds = []
    for images in (16, 1600):
        run = tmp_path / f"r{images}"
        train(load_config("mnist-ddpm", tiny_mnist_overrides + [f"train.images={images}",
                                                               "train.log_every_images=1600"]), run)
        pipe = load(run, device="cpu", weights="model")
        # the same 40 of the 1000 steps and the same noise for both: common random numbers
        bound = ddpm_vlb(pipe.denoiser, pipe.path, x, steps=40, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(bound.bits_per_dim).all()
        bounds.append(bound.bits_per_dim.mean().item())
    assert bounds[1] < 0.8 * bounds[0], bounds


def test_hutchinson_probes_average_to_the_exact_trace():
    """A linear drift with a full (non-diagonal) matrix: one probe is biased per draw, the mean
    over K probes approaches trace(A) with standard error ~ sqrt(2 sum_{i != j} a_ij^2 / K)."""
    from genmodels.metrics.likelihood import _divergence

    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 20, dtype=torch.float64, generator=g)
    x = torch.randn(3, 20, dtype=torch.float64, generator=g).requires_grad_(True)
    exact = _divergence(x @ a.T, x, None)
    torch.testing.assert_close(exact, torch.full((3,), a.trace().item(), dtype=torch.float64))
    k = 4000
    probe = (torch.randint(0, 2, (k, 3, 20), generator=g) * 2 - 1).double()
    estimate = _divergence(x @ a.T, x, probe)
    off = a - torch.diag(a.diagonal())
    se = math.sqrt((off.square().sum() + (off * off.T).sum()).item() / k)
    assert (estimate - exact).abs().max().item() < 4 * se, (estimate, exact, se)
    one = _divergence(x @ a.T, x, probe[:1])
    assert (one - exact).abs().max().item() > 4 * se  # a single probe is far off: the averaging matters
