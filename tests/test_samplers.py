"""Samplers against exact solutions (Gaussian data) and against an independent implementation (the
paper's DDIM); against diffusers' schedulers in test_samplers_diffusers.py."""

import math

import pytest
import torch

from genmodels.diffusion import DiscreteDDPM, NetDenoiser, PARAMETERIZATIONS, sigma_grid
from genmodels.samplers import generate
from genmodels.samplers import SeededNoise, sample_ddim, sample_ddpm, sample_euler

MU, S = 0.5, 0.3  # data ~ N(MU, S^2) per coordinate


def gaussian_denoiser(x, sigma, cond=None):
    """Exact E[x0 | x] for Gaussian data in VE coordinates: mu + s^2 / (s^2 + sigma^2) (x - mu)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype)
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def exact_ode_solution(x_start, sigma_start, sigma_end):
    """The probability-flow ODE keeps the standardised offset: x - mu scales as sqrt(s^2 + sigma^2)."""
    return MU + (x_start - MU) * math.sqrt((S**2 + sigma_end**2) / (S**2 + sigma_start**2))


def geometric_grid(steps, sigma_max=20.0, sigma_min=0.05):
    return torch.cat([torch.logspace(math.log10(sigma_max), math.log10(sigma_min), steps,
                                     dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


@pytest.mark.parametrize("sampler", [sample_euler, sample_ddim], ids=["euler", "ddim-eta0"])
def test_first_order_convergence_to_exact_ode_solution(sampler):
    x_start = torch.linspace(-40, 40, 101, dtype=torch.float64)
    errors = []
    for steps in (10, 20, 40, 80, 160):
        sigmas = geometric_grid(steps)
        # the exact solution at the last nonzero sigma, then the exact final jump (x -> D(x))
        # is what the sampler's last step does; compare at sigma_min to isolate the ODE error.
        out = sampler(gaussian_denoiser, x_start.clone(), sigmas[:-1])
        errors.append((out - exact_ode_solution(x_start, 20.0, 0.05)).abs().max().item())
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert errors[-1] < 1e-2
    assert all(1.7 < r < 2.3 for r in ratios[1:]), (errors, ratios)  # error halves: order 1


def test_ddim_eta0_equals_euler():
    sigmas = geometric_grid(30)
    x = torch.randn(500, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 20
    torch.testing.assert_close(sample_ddim(gaussian_denoiser, x.clone(), sigmas),
                               sample_euler(gaussian_denoiser, x.clone(), sigmas), rtol=1e-10, atol=1e-10)


def test_ddpm_ancestral_samples_have_the_data_distribution():
    path = DiscreteDDPM(schedule="linear")
    sigmas = sigma_grid(path, 1000)
    n = 10_000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dtype=torch.float64, generator=g) * path.prior_std(sigmas[0])
    noise = lambda: torch.randn(n, dtype=torch.float64, generator=g)  # noqa: E731
    out = sample_ddpm(gaussian_denoiser, x, sigmas, noise=noise)
    assert abs(out.mean().item() - MU) < 4 * S / math.sqrt(n)
    assert abs(out.std().item() - S) < 0.025 * S  # the std's standard error is 0.7 %


def test_ddim_eta0_is_deterministic_and_matches_data_std():
    path = DiscreteDDPM(schedule="cosine")
    sigmas = sigma_grid(path, 250)  # Euler's first-order bias in the std is ~4 % at 50 steps
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20_000, dtype=torch.float64, generator=g) * path.prior_std(sigmas[0])
    out = sample_ddim(gaussian_denoiser, x.clone(), sigmas)
    assert torch.equal(out, sample_ddim(gaussian_denoiser, x.clone(), sigmas))
    assert abs(out.std().item() - S) < 0.03 * S


class TinyEpsNet(torch.nn.Module):
    """A small random conv net conditioned on the timestep, standing in for a trained eps-model."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64) * 0.3)
        self.w2 = torch.nn.Parameter(torch.randn(1, 8, 3, 3, generator=g, dtype=torch.float64) * 0.3)

    def forward(self, x, t, cond=None):
        h = torch.nn.functional.conv2d(x, self.w1, padding=1)
        h = torch.tanh(h + torch.sin(t / 100.0).reshape(-1, 1, 1, 1))
        return torch.nn.functional.conv2d(h, self.w2, padding=1)


def reference_ddim_vp(net, path, x_T, steps):
    """DDIM (Song et al. 2021, Eq. 12, eta = 0) in the paper's own VP coordinates, on integer
    timesteps, without the Denoiser adapter: an independent oracle for ours."""
    abar = path.alphas_cumprod
    timesteps = (torch.arange(steps) * (path.timesteps // steps)).flip(0)
    x = x_T
    for i, n in enumerate(timesteps):
        a_t = abar[n]
        a_prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, dtype=torch.float64)
        eps = net(x, torch.full((x.shape[0],), float(n), dtype=torch.float64))
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_through_adapter_equals_paper_ddim_on_eps_model(schedule):
    path, net = DiscreteDDPM(schedule=schedule), TinyEpsNet()
    denoiser = NetDenoiser(net, path, PARAMETERIZATIONS["eps"])
    x_T = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigmas = sigma_grid(path, 25, spacing="leading")
    with torch.no_grad():
        expected = reference_ddim_vp(net, path, x_T, 25)
        x = x_T * path.prior_std(sigmas[0])  # VP x_T -> VE x = x_T / alpha_T
        ours_ddim = sample_ddim(denoiser, x.clone(), sigmas)
        ours_euler = sample_euler(denoiser, x.clone(), sigmas)
    torch.testing.assert_close(ours_ddim, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_euler, expected, rtol=1e-6, atol=1e-6)


def test_seeded_noise_is_per_sample():
    a = SeededNoise([5, 6, 7], (2, 3))
    b = SeededNoise([7], (2, 3))
    first_a, first_b = a(), b()
    torch.testing.assert_close(first_a[2], first_b[0], rtol=0, atol=0)
    torch.testing.assert_close(a()[2], b()[0], rtol=0, atol=0)  # later draws too


def test_generate_gives_sample_i_the_same_image_in_any_batch():
    path, net = DiscreteDDPM(), TinyEpsNet().float()
    denoiser = NetDenoiser(net, path, PARAMETERIZATIONS["eps"])
    kwargs = dict(shape=(1, 8, 8), sampler="ddpm", steps=10)
    together = generate(denoiser, path, seeds=range(10, 16), batch_size=6, **kwargs)
    apart = generate(denoiser, path, seeds=range(10, 16), batch_size=4, **kwargs)
    alone = generate(denoiser, path, seeds=[13], batch_size=1, **kwargs)
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together[3], alone[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together[0], together[1])
