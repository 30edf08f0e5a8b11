"""Flow matching on the shared core: the straight path's closed forms, Euler in t equals Euler in
sigma through the adapter, the exact minibatch OT coupling against brute force (against POT, and
the Sinkhorn coupling, in test_flows_pot.py), and 2-D mixtures learned."""

import pytest
import torch

import genmodels
from genmodels.config import load_config
from genmodels.data import TOY_DISTRIBUTIONS
from genmodels.diffusion import NetDenoiser, get_parameterization, sigma_grid
from genmodels.diffusion.paths import RectifiedFlow
from genmodels.objectives.couplings import couple, ot_permutation, squared_costs
from genmodels.samplers import sample_ddim, sample_euler
from genmodels.train.run import train


def test_straight_path_closed_forms():
    path, param = RectifiedFlow(), get_parameterization("velocity")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(64, 3, dtype=torch.float64, generator=g), torch.randn(64, 3, dtype=torch.float64, generator=g)
    t = torch.rand(64, dtype=torch.float64, generator=g) * path.t_max
    x_t, alpha, sigma = path.add_noise(x0, noise, t)
    torch.testing.assert_close(x_t, (1 - t[:, None]) * x0 + t[:, None] * noise)
    target = param.target(x0=x0, noise=noise, alpha=alpha, sigma=sigma)
    torch.testing.assert_close(target, noise - x0)
    torch.testing.assert_close(param.denoised(target, x_t=x_t, alpha=alpha, sigma=sigma), x0)
    s = path.to_sigma(t)
    torch.testing.assert_close(s, t / (1 - t))
    torch.testing.assert_close(path.from_sigma(s), t)
    torch.testing.assert_close(path.alpha_from_sigma(s), 1 - t)
    # the sampler's start: x_VE = noise / (1 - t_max), i.e. x_t = noise at t_max
    assert path.prior_std(path.to_sigma(torch.tensor(1.0, dtype=torch.float64))).item() == pytest.approx(1000.0)


def test_logit_normal_times_are_sigmoids_of_standard_normals():
    path = RectifiedFlow(t_sampling="logit_normal")
    t = path.sample_t(20_000, generator=torch.Generator().manual_seed(0), device="cpu")
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.03 and abs(logit.std().item() - 1) < 0.03


class TinyVelocityNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.5)

    def forward(self, x, c_noise):
        return torch.tanh(x @ self.w) * torch.cos(c_noise / 700)[:, None] - x


@pytest.mark.parametrize("sampler", [sample_euler, sample_ddim])
def test_euler_in_t_equals_euler_in_sigma_through_the_adapter(sampler):
    path, net = RectifiedFlow(), TinyVelocityNet()
    noise = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ts = torch.cat([path.grid(20), torch.zeros(1, dtype=torch.float64)])
    x = noise.clone()  # x_t at t_max: the noise (data share neglected)
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            x = x + (t_next - t) * net(x, 1000 * t.expand(16))
        sigmas = sigma_grid(path, 20)
        ours = sampler(NetDenoiser(net, path, get_parameterization("velocity")),
                       noise * path.prior_std(sigmas[0]), sigmas)
    torch.testing.assert_close(ours, x, rtol=1e-9, atol=1e-9)


def test_exact_ot_coupling_is_the_cheapest_permutation():
    """On 7 points every one of the 7! pairings can be tried: ours must cost the least, and on
    32 points it must keep both marginals and cost less than the independent pairing."""
    import itertools

    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(7, 2, generator=g) + 3, torch.randn(7, 2, generator=g)
    cost = squared_costs(x0, noise)
    rows = torch.arange(7)
    brute = min(cost[rows, list(p)].sum().item() for p in itertools.permutations(range(7)))
    assert cost[rows, ot_permutation(x0, noise)].sum().item() == pytest.approx(brute, rel=1e-12)
    x0, noise = torch.randn(32, 2, generator=g) + 3, torch.randn(32, 2, generator=g)
    perm = ot_permutation(x0, noise)
    assert sorted(perm.tolist()) == list(range(32))  # both marginals kept
    cost = squared_costs(x0, noise)
    assert cost[torch.arange(32), perm].mean() < cost.diagonal().mean()
    assert torch.equal(couple(x0, noise, "independent", generator=g), noise)
    assert torch.equal(couple(x0, noise, "ot", generator=g), noise[perm])


def mode_stats(x, dist):
    d = torch.cdist(x.double(), dist.modes.double())
    near = d.min(1).values < 3 * dist.mode_std
    hits = torch.bincount(d.argmin(1)[near], minlength=len(dist.modes))
    return int((hits > 0).sum()), near.double().mean().item()


@pytest.mark.parametrize("config", ["toy-flow", "toy-otcfm"])
def test_flow_matching_fits_eight_gaussians(config, tmp_path):
    from genmodels.metrics.toy import wasserstein

    dist = TOY_DISTRIBUTIONS["8gaussians"]
    train(load_config(config, ["train.images=300000", "train.device=cpu"]), tmp_path / "run")
    pipe = genmodels.load(tmp_path / "run", device="cpu")
    x = pipe.sample(1000, seed=0, sampler="euler", steps=50, progress=False)
    modes, near = mode_stats(x, dist)
    real = dist.sample(1000, generator=torch.Generator().manual_seed(0))
    w2 = wasserstein(x, real, p=2)
    assert modes == 8 and near > 0.8, (modes, near)
    # two real samples of 1000 are ~0.3 apart in W2; collapsing onto the origin is ~2
    assert w2 < 0.6, w2


def test_reflow_straightens_the_flow_and_improves_few_step_samples(tmp_path):
    """1-RF on 8 gaussians, then 2-RF trained on its ODE pairs (from its weights): trajectories
    get straighter and 2-step Euler samples get closer to the data."""
    from genmodels.metrics.toy import wasserstein
    from genmodels.reflow import reflow

    dist = TOY_DISTRIBUTIONS["8gaussians"]
    train(load_config("toy-flow", ["train.images=300000", "train.device=cpu"]), tmp_path / "rf1")
    result = reflow(tmp_path / "rf1", tmp_path / "rf2", pairs=20_000, steps=50, images=200_000)
    assert result.straightness_after < 0.5 * result.straightness_before, result
    real = dist.sample(2000, generator=torch.Generator().manual_seed(0))

    def w2_two_steps(run):
        x = genmodels.load(run, device="cpu").sample(2000, seed=0, sampler="euler", steps=2, progress=False)
        return wasserstein(x, real, p=2)

    assert w2_two_steps(tmp_path / "rf2") < w2_two_steps(tmp_path / "rf1")


def test_straightness_is_zero_for_a_straight_flow_and_positive_otherwise(tmp_path):
    """A flow whose data are one point c has the exact velocity z - c: every trajectory is a
    straight line. Built by training nothing: the net predicts z - c from x_t = (1 - t) c + t z."""
    from genmodels.reflow import trajectories

    train(load_config("toy-flow", ["train.images=256", "train.device=cpu"]), tmp_path / "run")
    pipe = genmodels.load(tmp_path / "run", device="cpu")
    c = torch.tensor([1.5, -0.5])

    class Exact(torch.nn.Module):
        def forward(self, x_t, c_noise):
            t = (c_noise / 1000).reshape(-1, 1)
            return (x_t - c) / t  # z - c, since x_t - c = t (z - c)

    pipe.net = Exact()
    straight = trajectories(pipe, 100, steps=10)[2].max().item()
    assert straight < 1e-4  # float32, and the start neglects the data's 1e-3 share of x_t

    class Bent(torch.nn.Module):
        def forward(self, x_t, c_noise):
            t = (c_noise / 1000).reshape(-1, 1)
            return (x_t - c * (1 + t)) / t  # the target drifts with t: curved paths

    pipe.net = Bent()
    assert trajectories(pipe, 100, steps=10)[2].mean().item() > 100 * straight


@pytest.mark.parametrize("config", ["toy-flow", "toy-otcfm"])
def test_flow_matching_fits_two_moons(config, tmp_path):
    """Measured: W2 0.165 (I-CFM) and 0.153 (OT-CFM) against 0.132 between two real samples of
    1,000 and 1.40 for samples collapsed onto the mean."""
    from genmodels.metrics.toy import mmd_rbf, wasserstein

    dist = TOY_DISTRIBUTIONS["moons"]
    train(load_config(config, ["data.name=moons", "train.images=300000", "train.device=cpu"]), tmp_path / "run")
    x = genmodels.load(tmp_path / "run", device="cpu").sample(1000, seed=0, sampler="euler", steps=50,
                                                              progress=False)
    real = dist.sample(1000, generator=torch.Generator().manual_seed(0))
    assert wasserstein(x, real, p=2) < 0.25
    assert mmd_rbf(x, real) < 0.003
