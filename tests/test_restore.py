"""Restoration (genmodels.edit.restore): the operators' matrices and SVDs, DDRM against a Gaussian
prior's exact posterior, DPS's pull toward the measurement, the errors, the CLI verb."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.edit.restore import (
    baselines,
    blur_kernel,
    ddrm_walk,
    degrade,
    dps_walk,
    from_matrix,
    operator,
    psnr,
)
from genmodels.errors import ConfigError
from genmodels.samplers import generate
from tests.test_cli import assert_one_line_error, run_cli
from tests.test_seams import ToyVE

TASKS = ["sr2", "sr4", "deblur:1.5", "denoise:0.2"]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 8, 8)])
def test_the_svd_reproduces_the_matrix_and_apply_equals_it(task, shape):
    if task == "deblur:1.5" and shape[1] == 8:
        shape = (3, 12, 12)
    op = operator(task, shape)
    m = op.matrix
    assert torch.allclose(op.u @ torch.diag(op.s) @ op.v[:, : len(op.s)].T, m, atol=1e-12)
    assert torch.allclose(op.v.T @ op.v, torch.eye(len(op.v), dtype=torch.float64), atol=1e-12)  # full, orthogonal
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(op.apply(x), op.by_matrix(x), atol=1e-5)
    assert op.apply(x).shape[1:] == op.out_shape


def test_the_matrices_are_what_the_tasks_say():
    """Independent of apply: block averaging has k^2 entries of 1/k^2 per row; an interior pixel's
    column of the blur is the normalized Gaussian kernel; denoising is the identity."""
    sr = operator("sr4", (1, 28, 28)).matrix
    assert sr.shape == (49, 784)
    assert torch.equal((sr > 0).sum(1), torch.full((49,), 16)) and torch.allclose(sr.sum(1), torch.ones(49, dtype=torch.float64))
    assert torch.allclose(operator("sr4", (1, 28, 28)).s, torch.full((49,), 0.25, dtype=torch.float64))
    k = blur_kernel(1.5)
    assert k.shape == (11, 11) and math.isclose(k.sum().item(), 1.0)
    column = operator("deblur:1.5", (1, 28, 28)).matrix[:, 14 * 28 + 14].reshape(28, 28)
    assert torch.allclose(column[9:20, 9:20], k, atol=1e-12) and column.sum().item() == pytest.approx(1.0)
    assert torch.equal(operator("denoise:0.2", (1, 28, 28)).matrix, torch.eye(784, dtype=torch.float64))
    assert operator("denoise:0.2", (1, 28, 28)).sigma_y == 0.2 and operator("sr4", (1, 28, 28)).sigma_y == 0.0


@pytest.mark.parametrize("task", ["sr3", "deblur", "deblur:x", "deblur:-1", "blur:1", "denoise:", "sr4:0.1"])
def test_bad_task_strings_fail_in_one_line_naming_the_forms(task):
    with pytest.raises(ConfigError) as err:
        operator(task, (1, 28, 28))
    assert "\n" not in str(err.value) and "sr2, sr4" in str(err.value) and "deblur:S" in str(err.value)


def test_shapes_the_operator_cannot_take_are_refused():
    with pytest.raises(ConfigError, match="divisible by 4"):
        operator("sr4", (1, 30, 30))
    with pytest.raises(ConfigError, match="wider"):
        operator("deblur:5", (1, 12, 12))


# ---- DDRM against a closed-form posterior --------------------------------------------------------
D = 4
H = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, -0.5]], dtype=torch.float64)
MU = torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=torch.float64)
X_TRUE = torch.tensor([0.5, 0.1, -0.3, 0.4], dtype=torch.float64)


def gaussian_prior(cov):
    """The exact denoiser of N(MU, cov) data on [N, 1, D] states: MU + cov (cov + sigma^2 I)^-1 (x - MU)."""

    def denoiser(x, sigma, cond=None):
        gain = cov @ torch.linalg.inv(cov + float(sigma) ** 2 * torch.eye(D, dtype=torch.float64))
        return (MU + (x.reshape(len(x), D).double() - MU) @ gain.T).reshape(x.shape).to(x.dtype)

    return denoiser


def posterior(cov, y, sigma_y):
    """Mean and covariance of x | y for x ~ N(MU, cov), y = H x + sigma_y n (sigma_y = 0: conditioning
    on H x = y)."""
    if sigma_y == 0:
        gain = cov @ H.T @ torch.linalg.inv(H @ cov @ H.T)
        return MU + gain @ (y - H @ MU), cov - gain @ H @ cov
    c = torch.linalg.inv(torch.linalg.inv(cov) + H.T @ H / sigma_y**2)
    return c @ (torch.linalg.inv(cov) @ MU + H.T @ y / sigma_y**2), c


def v_diagonal_prior():
    """A non-isotropic covariance diagonal in H's right singular basis, where DDRM's spectral
    factorization is the posterior's (the unmeasured components are independent of y)."""
    v = from_matrix(H, (1, D)).v
    return v @ torch.diag(torch.tensor([0.5, 0.2, 0.3, 0.1], dtype=torch.float64)) @ v.T


def ddrm_samples(cov, sigma_y, *, n=4000, steps=20, **options):
    op = from_matrix(H, (1, D), sigma_y=sigma_y)
    y = (H @ X_TRUE).float().reshape(1, 1, 2)
    walk = ddrm_walk(op, y.expand(n, 1, 2), **options)
    x = generate(gaussian_prior(cov), ToyVE(), shape=(1, D), seeds=range(n), steps=steps, walk=walk, batch_size=n)
    return x.double().reshape(n, D), y.double().reshape(2)


def test_noiseless_ddrm_samples_the_exact_posterior_where_its_factorization_holds():
    """sigma_y = 0, a prior diagonal in V, eta = 0 (DDIM on the unmeasured components) and 200 steps:
    mean within 4 standard errors, variances within 8 % (their sampling error is sqrt(2 / n) = 2 %,
    the rest is DDIM's discretization: 0.97-1.005 measured), measured components exact."""
    cov = v_diagonal_prior()
    x, y = ddrm_samples(cov, 0.0, steps=200, eta=0.0)
    mean, c = posterior(cov, y, 0.0)
    se = c.diag().sqrt() / math.sqrt(len(x))
    assert ((x.mean(0) - mean).abs() < 4 * se).all(), ((x.mean(0) - mean) / se)
    assert torch.allclose(x.var(0) / c.diag(), torch.ones(D, dtype=torch.float64), atol=0.08), x.var(0) / c.diag()
    assert torch.allclose(x @ H.T, y.expand(len(x), 2), atol=1e-5)  # A x = y


def test_ddrm_at_its_defaults_keeps_the_posterior_mean_and_the_measurement_exactly():
    """The paper's eta = 0.85, 20 steps, on a correlated prior (not diagonal in V): H x = y exactly,
    the mean within 0.2 posterior std (measured 0.06-0.1) and the variance at 0.4-1.1 of the
    posterior's (measured 0.65-0.83: DDRM is no exact sampler; its fresh-noise share eta and the
    redrawn noise of the measured components, as in replacement inpainting, shrink it)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64) * 0.5
    cov = a @ a.T + 0.05 * torch.eye(D, dtype=torch.float64)
    x, y = ddrm_samples(cov, 0.0)
    mean, c = posterior(cov, y, 0.0)
    std = c.diag().sqrt()
    assert ((x.mean(0) - mean).abs() < 0.2 * std).all(), (x.mean(0) - mean) / std
    assert ((x.var(0) / c.diag() > 0.4) & (x.var(0) / c.diag() < 1.1)).all(), x.var(0) / c.diag()
    assert torch.allclose(x @ H.T, y.expand(len(x), 2), atol=1e-5)


def test_noisy_ddrm_moves_from_the_prior_to_near_the_posterior_mean():
    """sigma_y = 0.2: DDRM's estimate of x0 from a state that already holds y ignores y, so its
    posterior mean is biased (measured 0.12 posterior std at most here); it must land within
    0.2 std of the exact mean, far closer than the prior mean, with the variance below the prior's."""
    cov = v_diagonal_prior()
    x, y = ddrm_samples(cov, 0.2, steps=100)
    mean, c = posterior(cov, y, 0.2)
    std = c.diag().sqrt()
    assert ((x.mean(0) - mean).abs() < 0.2 * std).all(), (x.mean(0) - mean) / std
    assert (x.mean(0) - mean).norm() < 0.25 * (MU - mean).norm()
    assert (x.var(0) < cov.diag()).all()


def test_ddrm_above_the_measurement_noise_draws_p_x_sigma_given_y():
    """At sigma' >= c_i = sigma_y / s_i a measured component is drawn from p(x_sigma' | y) exactly:
    N(y_bar, sigma'^2 - c_i^2) (the last case of DDRM's Eq. 8 with eta_b = 1). On ToyVE's 5-step
    grid the second step lands at sigma' = 0.502, just above c = 0.5 / 1.118 = 0.447 (std 0.23)."""
    op = from_matrix(H, (1, D), sigma_y=0.5)
    n = 4000
    y = (H @ X_TRUE).float().reshape(1, 1, 2)
    y_bar, c, _ = op.spectral_measurement(y)
    seen = {}

    def callback(i, sigma, x, denoised):
        if i == 1:
            seen["x"], seen["sigma"] = op.to_spectral(x)[:, 0, :2], float(sigma)

    generate(gaussian_prior(v_diagonal_prior()), ToyVE(), shape=(1, D), seeds=range(n), steps=5,
             walk=ddrm_walk(op, y.expand(n, 1, 2)), callback=callback, batch_size=n)
    assert seen["sigma"] > c[0] and seen["sigma"] < 1.2 * c[0]
    std = (seen["sigma"] ** 2 - c[:2] ** 2).sqrt()
    assert ((seen["x"].mean(0) - y_bar[0, 0, :2]).abs() < 4 * std / math.sqrt(n)).all()
    assert torch.allclose(seen["x"].std(0), std, rtol=0.05)


# ---- DPS -----------------------------------------------------------------------------------------
def test_dps_pulls_samples_toward_the_measurement():
    """zeta = 0.1 suits this 4-D toy (a normalized gradient step of zeta overshoots residuals
    below it: zeta = 0.5 leaves 0.53); the pull is the same on 50 and 200 steps (measured)."""
    cov = v_diagonal_prior()
    op = from_matrix(H, (1, D), sigma_y=0.05)
    n = 200
    y = (H @ X_TRUE).float().reshape(1, 1, 2).expand(n, 1, 2)

    def residual(zeta):
        walk = dps_walk(op, y, sampler="ddpm", zeta=zeta)
        x = generate(gaussian_prior(cov), ToyVE(), shape=(1, D), seeds=range(n), steps=50, walk=walk, batch_size=n)
        return (op.apply(x) - y).flatten(1).norm(dim=1).mean().item()

    unguided, guided = residual(0.0), residual(0.1)  # measured: 0.90 and 0.15
    assert guided < 0.3 * unguided, (guided, unguided)


# ---- baselines and the pipeline ------------------------------------------------------------------
def test_baselines_beat_nothing_and_degrade_adds_the_stated_noise():
    from genmodels.data import load_dataset

    x = load_dataset("mnist", split="test").x[:16]
    g = torch.Generator().manual_seed(0)
    noisy = degrade(x, "denoise:0.2", g)
    assert (noisy - x).std().item() == pytest.approx(0.2, rel=0.05)
    blurred = degrade(x, "deblur:1.5", g)
    assert psnr(baselines(blurred, "deblur:1.5", (1, 28, 28))["wiener"], x).mean() > psnr(blurred, x).mean()
    assert psnr(baselines(noisy, "denoise:0.2", (1, 28, 28))["wiener"], x).mean() > psnr(noisy, x).mean()
    low = degrade(x, "sr4", g)
    assert baselines(low, "sr4", (1, 28, 28))["bicubic"].shape == x.shape


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from genmodels.config import load_config
    from genmodels.train.run import train
    from tests.conftest import TINY_UNET

    run = tmp_path_factory.mktemp("restore") / "run"
    train(load_config("mnist-ddpm", TINY_UNET + ["train.images=32", "train.batch_size=16", "train.device=cpu"]), run)
    return run


def test_ddrm_on_a_trained_network_reproduces_a_noiseless_measurement(tiny_run):
    import genmodels
    from genmodels.data import load_dataset
    from genmodels.edit.restore import restore

    pipe = genmodels.load(tiny_run, device="cpu")
    x = load_dataset("mnist", split="test").x[:2]
    y = degrade(x, "sr4", None)
    out = restore(pipe, y, "sr4", steps=4)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the pipeline clamps to [-1, 1]; unclamped, DDRM's samples reproduce a noiseless measurement
    op = operator("sr4", (1, 28, 28))
    raw = generate(pipe.denoiser, pipe.path, shape=(1, 28, 28), seeds=range(2), steps=4, walk=ddrm_walk(op, y))
    assert torch.allclose(op.apply(raw), y, atol=1e-4), (op.apply(raw) - y).abs().max()
    dps = restore(pipe, y, "sr4", method="dps", steps=3)
    assert dps.shape == x.shape and torch.isfinite(dps).all()
    with pytest.raises(ConfigError, match="method"):
        restore(pipe, y, "sr4", method="nope")


def test_cli_restores_an_input_and_reports_psnr_on_test_images(tiny_run, tmp_path, capsys):
    from genmodels.images import read_parameters

    low = tmp_path / "low.png"
    Image.fromarray(np.full((7, 7), 128, np.uint8)).save(low)
    out = tmp_path / "restored.png"
    code, stdout, err = run_cli(["restore", tiny_run, "--input", low, "--task", "sr4", "--steps", "3", "--n", "2",
                                 "--out", out], capsys)
    assert code in (0, None), err
    params = read_parameters(out)
    assert params["task"] == "sr4" and params["method"] == "ddrm" and params["steps"] == 3 and params["seed"] == 0
    code, stdout, err = run_cli(["restore", tiny_run, "--test", "2", "--task", "denoise:0.2", "--method", "ddrm",
                                 "--method", "dps", "--steps", "2", "--out", tmp_path / "t.png"], capsys)
    assert code in (0, None), err
    for name in ("ddrm", "dps", "wiener", "noisy"):
        assert name in stdout
    code, _, err = run_cli(["restore", tiny_run, "--input", low, "--task", "sr2", "--out", out], capsys)
    assert_one_line_error(code, err, "14x14", "7x7")
    code, _, err = run_cli(["restore", tiny_run, "--input", low, "--task", "zoom", "--out", out], capsys)
    assert_one_line_error(code, err, "sr2, sr4")


def test_a_flow_run_restores_and_a_latent_run_is_refused(tmp_path):
    from types import SimpleNamespace

    import genmodels
    from genmodels.config import load_config
    from genmodels.data import load_dataset
    from genmodels.edit.restore import restore
    from genmodels.train.run import train
    from tests.conftest import TINY_UNET

    run = tmp_path / "flow"
    train(load_config("mnist-flow", TINY_UNET + ["train.images=16", "train.batch_size=16", "train.device=cpu"]), run)
    pipe = genmodels.load(run, device="cpu")
    x = load_dataset("mnist", split="test").x[:2]
    for task in ("sr2", "deblur:1.5", "denoise:0.2"):
        out = restore(pipe, degrade(x, task, torch.Generator().manual_seed(0)), task, steps=3)
        assert out.shape == x.shape and torch.isfinite(out).all()
    latent = SimpleNamespace(latent=object(), data_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="pixel-space") as err:
        restore(latent, degrade(x, "sr4"), "sr4")
    assert "\n" not in str(err.value)
