"""GAN losses, regularisers and networks against formulas and independent computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from genmodels.errors import ConfigError
from genmodels.nn import gan as G
from genmodels.objectives import gan

R = torch.tensor([2.0, -1.0, 0.5])
FK = torch.tensor([-3.0, 0.25, 1.5])


def sig(v):
    return 1 / (1 + torch.exp(-v))


@pytest.mark.parametrize("kind, d_expected, g_expected", [
    ("minimax", -torch.log(sig(R)) - torch.log(1 - sig(FK)), torch.log(1 - sig(FK))),
    ("non_saturating", -torch.log(sig(R)) - torch.log(1 - sig(FK)), -torch.log(sig(FK))),
    ("lsgan", 0.5 * (R - 1) ** 2 + 0.5 * FK ** 2, 0.5 * (FK - 1) ** 2),
    ("wgan", FK - R, -FK),
    ("hinge", torch.clamp(1 - R, min=0) + torch.clamp(1 + FK, min=0), -FK),
])
def test_losses_match_their_formulas(kind, d_expected, g_expected):
    torch.testing.assert_close(gan.d_loss(kind, R, FK), d_expected)
    torch.testing.assert_close(gan.g_loss(kind, FK), g_expected)
    # patch logits [B, 1, h, w] are averaged per sample
    patch = FK[:, None, None, None].expand(3, 1, 2, 2)
    torch.testing.assert_close(gan.g_loss(kind, patch), g_expected)


def test_saturating_loss_has_vanishing_gradient_where_d_rejects_fakes():
    # the lesson of Goodfellow et al. sec. 3: for f << 0, d/df log(1 - s(f)) -> 0, -log s(f) -> -1
    f = torch.tensor([-8.0], requires_grad=True)
    (g_sat,) = torch.autograd.grad(gan.g_loss("minimax", f).sum(), f)
    (g_ns,) = torch.autograd.grad(gan.g_loss("non_saturating", f).sum(), f)
    assert abs(g_sat.item()) < 1e-3 and abs(g_ns.item() + 1) < 1e-3


def test_unknown_loss_names_the_field():
    with pytest.raises(ConfigError, match="gan.loss 'wgan_gp'.*hinge"):
        gan.d_loss("wgan_gp", R, FK)


def _quadratic_critic():
    A = torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return lambda x: (x @ A * x).sum(1) + torch.sin(x).sum(1)


def _fd_grad_norm(critic, x, h=1e-6):
    grads = torch.zeros_like(x)
    for j in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, j] = h
        grads[:, j] = (critic(x + e) - critic(x - e)) / (2 * h)
    return grads.norm(dim=1)


def test_gradient_penalty_equals_finite_differences():
    critic = _quadratic_critic()
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    fake = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    gp = gan.gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(3))
    eps = torch.rand(4, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_hat = eps * real + (1 - eps) * fake
    torch.testing.assert_close(gp, (_fd_grad_norm(critic, x_hat) - 1) ** 2, rtol=1e-6, atol=1e-8)
    r1 = gan.r1_penalty(critic, real)
    torch.testing.assert_close(r1, _fd_grad_norm(critic, real) ** 2, rtol=1e-6, atol=1e-8)


def test_penalties_train_the_critic():
    D = G.MLPDiscriminator(dim=2, hidden=8, depth=1)
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    (gan.gradient_penalty(D, real, fake).sum() + gan.r1_penalty(D, real).sum()).backward()
    # (the biases get none: a piecewise-linear D's input gradient does not depend on them)
    assert D.net[0].weight.grad.abs().sum() > 0 and D.net[2].weight.grad.abs().sum() > 0


def test_spectral_norm_sigma_matches_the_largest_singular_value():
    torch.manual_seed(0)
    D = G.DCDiscriminator(base_channels=8, spectral_norm=True)
    for _ in range(200):  # one power iteration per training-mode forward
        D(torch.randn(1, 1, 28, 28))
    D.eval()
    for layer in [D.from_rgb["2"], D.down[0], D.down[1], D.conv, D.out]:
        W = layer.parametrizations.weight.original
        W_mat = W.reshape(W.shape[0], -1)
        sigma = torch.linalg.matrix_norm(W_mat, ord=2)
        normalised = layer.weight.reshape(W.shape[0], -1)
        torch.testing.assert_close(torch.linalg.matrix_norm(normalised, ord=2), torch.tensor(1.0), rtol=1e-3, atol=0)
        torch.testing.assert_close(W_mat.norm() / normalised.norm(), sigma, rtol=1e-3, atol=0)


def _tiny_dc(**kw):
    return G.DCGenerator(z_dim=8, base_channels=8, **kw), G.DCDiscriminator(base_channels=8, **kw)


@pytest.mark.parametrize("kind", gan.LOSSES)
def test_d_phase_gives_g_no_gradient_and_g_phase_gives_d_none(kind):
    torch.manual_seed(0)
    g, d = _tiny_dc()
    obj = gan.GANObjective(loss=kind, z_dim=8, gp_weight=10.0 if kind == "wgan" else 0.0,
                           r1_gamma=1.0 if kind == "non_saturating" else 0.0, diffaugment=("translation",))
    batch = {"x": torch.rand(4, 1, 28, 28) * 2 - 1}
    loss, logs = obj.d_loss(g, d, batch, generator=torch.Generator().manual_seed(0))
    loss.mean().backward()
    assert all(p.grad is None for p in g.parameters())
    assert all(p.grad is not None for p in d.parameters())
    assert {"d_loss", "d_real", "d_fake"} <= set(logs)
    d.zero_grad(set_to_none=True)
    loss, _ = obj.g_loss(g, d, batch, generator=torch.Generator().manual_seed(0))
    loss.mean().backward()
    assert all(p.grad is None for p in d.parameters())
    assert all(p.grad is not None for p in g.parameters())
    assert all(p.requires_grad for p in d.parameters())


def test_diffaugment_is_differentiable_and_shifts_by_whole_pixels():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8).requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    out = gan.diff_augment(x, ("color", "translation", "cutout"), generator=gen)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.abs().sum() > 0
    moved = gan.diff_augment(x.detach(), ("translation",), generator=torch.Generator().manual_seed(1))
    # every output pixel is 0 (padding) or an input pixel of the same image and channel
    for b in range(2):
        for c in range(3):
            values = set(moved[b, c].flatten().tolist()) - {0.0}
            assert values <= set(x[b, c].flatten().tolist())
    cut = gan.diff_augment(torch.ones(3, 1, 8, 8), ("cutout",), generator=gen)
    zeros = (cut == 0).flatten(1).sum(1)
    assert ((zeros > 0) & (zeros <= 16)).all()  # a 4x4 square, clipped at the border


def test_truncated_normal_redraws_outside_the_threshold():
    gen = torch.Generator().manual_seed(0)
    z = gan.truncated_normal((1000, 16), threshold=0.7, generator=gen)
    assert z.abs().max() <= 0.7
    # still a truncated normal: its variance is well below 1 and matches the closed form
    a = 0.7
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    var = 1 - 2 * a * phi / math.erf(a / math.sqrt(2))
    assert abs(z.var().item() - var) < 0.01


def test_minibatch_std_appends_the_group_std():
    x = torch.randn(6, 3, 4, 4)
    out = G.MinibatchStd(group_size=3)(x)  # groups: samples {0, 2, 4} and {1, 3, 5}
    assert out.shape == (6, 4, 4, 4)
    expected = x[0::2].std(0, unbiased=False).mean()
    torch.testing.assert_close(out[0, 3], torch.full((4, 4), expected.item()), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out[2, 3], out[0, 3])


def test_modulated_conv_equals_plain_conv_with_the_demodulated_weight():
    torch.manual_seed(0)
    conv = G.ModulatedConv2d(4, 5, 3, w_dim=6)
    x, w = torch.randn(3, 4, 7, 7), torch.randn(3, 6)
    out = conv(x, w)
    style = w @ (conv.affine.weight * conv.affine.scale).T + conv.affine.bias
    for i in range(3):
        weight = conv.weight * conv.scale * style[i][None, :, None, None]
        weight = weight / weight.square().sum((1, 2, 3), keepdim=True).add(1e-8).sqrt()
        torch.testing.assert_close(out[i:i + 1], F.conv2d(x[i:i + 1], weight, padding=1), rtol=1e-4, atol=1e-5)
    # demodulation makes each output channel's weight unit-norm
    torch.testing.assert_close(conv.modulated_weight(w).square().sum((2, 3, 4)), torch.ones(3, 5), rtol=1e-4, atol=1e-4)


def test_stylegan_truncation_and_mixing():
    torch.manual_seed(0)
    g = G.StyleGenerator(z_dim=8, w_dim=8, mapping_layers=2, base_channels=4)
    for _ in range(3):  # training-mode mapping updates w_avg
        g.map(torch.randn(16, 8))
    assert g.w_avg.abs().sum() > 0
    g.eval()
    z1, z2 = torch.randn(2, 8), torch.randn(2, 8)
    torch.testing.assert_close(g.map(z1, psi=0.0), g.w_avg.expand(2, -1))
    noise = [torch.randn(s) for s in g.noise_shapes(2)]
    a = g(z1, psi=0.0, noise=noise)
    b = g(z2, psi=0.0, noise=noise)
    torch.testing.assert_close(a, b)  # psi = 0: every z gives the image of w_avg
    # mixing at crossover k equals synthesis with w(z1) in slots of depth < k, w(z2) elsewhere
    w1, w2 = g.map(z1), g.map(z2)
    ws = torch.stack([w1 if d < 3 else w2 for d in g.w_positions()], 1)
    torch.testing.assert_close(g(z1, z2=z2, crossover=3, noise=noise), g.synthesis(ws, noise))
    assert g(z1, noise=noise).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="crossover"):
        g(z1, z2=z2, crossover=0)


def test_progressive_growing_fades_in_from_the_upsampled_lower_level():
    torch.manual_seed(0)
    g = G.DCGenerator(z_dim=8, base_channels=8, norm="pixel", equalized_lr=True, progressive=True)
    d = G.DCDiscriminator(base_channels=8, equalized_lr=True, progressive=True, minibatch_std=True)
    z, x = torch.randn(3, 8), torch.randn(3, 1, 28, 28)
    g.set_growth(1, 1.0)
    low = g(z)
    d.set_growth(1, 1.0)
    d_low = d(x)
    g.set_growth(2, 0.0)
    d.set_growth(2, 0.0)
    torch.testing.assert_close(g(z), low)
    torch.testing.assert_close(d(x), d_low)
    # the 14x14 image upsampled: 2x2 blocks of equal pixels
    torch.testing.assert_close(low, F.interpolate(low[:, :, ::2, ::2], scale_factor=2.0, mode="nearest"))
    g.set_growth(2, 0.5)
    assert not torch.allclose(g(z), low)
    g.set_growth(0, 1.0)
    assert g(z).shape == (3, 1, 28, 28)


def test_conditional_nets_use_the_label():
    torch.manual_seed(0)
    g, d = _tiny_dc(num_classes=10)
    g.eval()
    z = torch.randn(2, 8)
    y0, y1 = torch.tensor([0, 0]), torch.tensor([3, 3])
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, G.ConditionalBatchNorm2d):
                m.gamma.weight.normal_()
        d.embed.weight.normal_()
    assert not torch.allclose(g(z, {"y": y0}), g(z, {"y": y1}))
    x = torch.randn(2, 1, 28, 28)
    # projection: the label enters only as <embed(y), phi(x)>
    h = d.features(x)
    torch.testing.assert_close(d(x, {"y": y1}) - d(x, {"y": y0}), (h * (d.embed(y1) - d.embed(y0))).sum(1))
    with pytest.raises(ValueError, match="needs labels"):
        g(z)


def test_pix2pix_shapes_noise_and_bad_input():
    torch.manual_seed(0)
    u, p = G.UNetGenerator(base_channels=8), G.PatchDiscriminator(base_channels=8)
    cond = {"image": torch.randn(2, 1, 28, 28)}
    out = u(cond)
    assert out.shape == (2, 1, 28, 28) and p(out, cond).shape == (2, 1, 7, 7)
    # no z: the decoder's dropout is the only noise, in training and, if asked, at sampling
    assert not torch.equal(u(cond), u(cond))
    assert torch.equal(u.eval()(cond), u(cond))
    kept = G.UNetGenerator(base_channels=8, dropout_at_sampling=True).eval()
    assert not torch.equal(kept(cond), kept(cond))
    without = G.UNetGenerator(base_channels=8, dropout=0.0)
    assert torch.equal(without(cond), without(cond))  # training, batch statistics, but no dropout
    with torch.no_grad():  # pre-activations far beyond +-1: the last layer squashes them into [-1, 1]
        u.out.weight.mul_(100)
    assert 0.99 < u(cond).abs().max() <= 1
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\], got \[2, 3, 28, 28\]"):
        u({"image": torch.randn(2, 3, 28, 28)})
    with pytest.raises(ConfigError, match="image_size 30"):
        G.DCGenerator(image_size=30)


def test_gan_nets_output_shapes():
    g, d = _tiny_dc()
    assert g(torch.randn(3, 8)).shape == (3, 1, 28, 28)
    assert d(torch.randn(3, 1, 28, 28)).shape == (3,)
    mg, md = G.MLPGenerator(z_dim=4), G.MLPDiscriminator(spectral_norm=True)
    assert mg(torch.randn(5, 4)).shape == (5, 2) and md(torch.randn(5, 2)).shape == (5,)


def test_sobel_edges_of_a_step_and_the_edges_dataset():
    from genmodels.data import InfiniteBatches, load_dataset
    from genmodels.data.datasets import sobel_edges

    x = -torch.ones(1, 1, 6, 6)
    x[..., 3:] = 1.0  # a vertical step from 0 to 1 in [0, 1] intensities
    e = sobel_edges(x)
    # Sobel x-response at the two columns beside the step is 1 + 2 + 1 = 4: magnitude / 2 saturates
    assert (e[0, 0, :, 2:4] == 1).all() and (e[0, 0, :, :2] == -1).all() and (e[0, 0, :, 4:] == -1).all()
    data = load_dataset("edges:mnist", split="test")
    assert data.cond["image"].shape == data.x.shape and data.y is not None
    batch = next(InfiniteBatches(data, 4, seed=0))
    torch.testing.assert_close(batch["cond"]["image"], sobel_edges(batch["x"]))
