"""Tests for genmodels.nn: shapes, conditioning, memory formats, gradients and config errors."""

import re

import pytest
import torch

from genmodels.errors import ConfigError
from genmodels.nn import MLP, NETWORKS, UNet, build_network
from genmodels.nn.layers import timestep_embedding

SMALL = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(7,),
             image_size=14)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomise every parameter: the zero-initialised output layers otherwise make any two
    inputs give the same (zero) output, hiding whether conditioning reaches the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.mark.parametrize("kwargs, shape", [
    ({}, (2, 1, 28, 28)),
    (dict(in_channels=3, image_size=32, base_channels=16, channel_mult=(1, 2, 2, 2),
          attn_resolutions=(8, 4), num_res_blocks=2), (2, 3, 32, 32)),
    (dict(SMALL, in_channels=2), (3, 2, 14, 14)),
    (dict(base_channels=16, channel_mult=(1,), attn_resolutions=(), image_size=9), (1, 1, 9, 9)),
    (dict(SMALL, extra_up_block=False, num_res_blocks=2), (2, 1, 14, 14)),
    (dict(extra_up_block=False, channel_mult=(1, 2, 4)), (2, 1, 28, 28)),
])
def test_unet_output_shape_equals_input_shape(kwargs, shape):
    model = perturbed(UNet(**kwargs))
    out = model(torch.randn(shape), torch.rand(shape[0]) * 1000)
    assert out.shape == shape
    assert torch.isfinite(out).all()


def test_unet_out_channels():
    out = UNet(**SMALL, out_channels=2)(torch.randn(2, 1, 14, 14), torch.rand(2))
    assert out.shape == (2, 2, 14, 14)


def test_default_unet_has_1_to_3_million_parameters():
    params = sum(p.numel() for p in UNet().parameters())
    assert 1_000_000 <= params <= 3_000_000, params


def test_lean_unet_up_path_mirrors_down_path():
    # ADM: num_res_blocks + 1 blocks per up level; lean: as many as on the way down.
    def up_blocks(model):
        return sum(1 for m in model.up if hasattr(m, "res"))

    for blocks in (1, 2):
        adm = UNet(**dict(SMALL, num_res_blocks=blocks))
        lean = UNet(**dict(SMALL, num_res_blocks=blocks, extra_up_block=False))
        assert up_blocks(adm) == 2 * (blocks + 1)
        assert up_blocks(lean) == 2 * blocks
        assert sum(p.numel() for p in lean.parameters()) < sum(p.numel() for p in adm.parameters())


def test_fresh_unet_outputs_zero():
    # Zero-initialised output conv (ADM/EDM): the untrained net predicts exactly 0.
    out = UNet(**SMALL)(torch.randn(2, 1, 14, 14), torch.rand(2) * 1000)
    assert torch.equal(out, torch.zeros_like(out))


def test_timestep_embedding_is_ddpm_sinusoid():
    emb = timestep_embedding(torch.tensor([0.0, 500.0]), 8)
    freqs = 10000.0 ** (-torch.arange(4) / 4)
    expected = torch.cat([torch.cos(500 * freqs), torch.sin(500 * freqs)])
    assert torch.allclose(emb[0], torch.cat([torch.ones(4), torch.zeros(4)]))
    assert torch.allclose(emb[1], expected, atol=1e-5)


def test_unet_noise_level_changes_output():
    model = perturbed(UNet(**SMALL))
    x = torch.randn(1, 1, 14, 14).expand(2, -1, -1, -1)
    out = model(x, torch.tensor([10.0, 900.0]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_unet_class_label_changes_output_and_none_is_null_class():
    model = perturbed(UNet(**SMALL, num_classes=10))
    x = torch.randn(1, 1, 14, 14).expand(3, -1, -1, -1)
    c_noise = torch.full((3,), 300.0)
    out = model(x, c_noise, {"y": torch.tensor([0, 7, 10])})
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert torch.allclose(model(x, c_noise), out[2].expand(3, -1, -1, -1), atol=1e-6)


def test_unet_scalar_c_noise_broadcasts():
    model = perturbed(UNet(**SMALL))
    x = torch.randn(2, 1, 14, 14)
    assert torch.allclose(model(x, torch.tensor(5.0)), model(x, torch.full((2,), 5.0)))


def test_unet_channels_last_matches_contiguous():
    model = perturbed(UNet())
    x = torch.randn(2, 1, 28, 28)
    c_noise = torch.tensor([3.0, 700.0])
    expected = model(x, c_noise)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.to(memory_format=torch.channels_last), c_noise)
    assert torch.allclose(out, expected, atol=1e-4, rtol=1e-4)


def test_gradients_reach_first_layer():
    model = perturbed(UNet(**SMALL, num_classes=3)).train()
    model(torch.randn(2, 1, 14, 14), torch.rand(2) * 1000, {"y": torch.tensor([0, 2])}).square().mean().backward()
    assert model.conv_in.weight.grad.abs().sum() > 0
    assert model.time_embed[0].weight.grad.abs().sum() > 0
    assert model.class_embed.weight.grad.abs().sum() > 0


def test_zero_init_still_trains_everything_after_one_step():
    # The zero-initialised output conv gets a gradient at step 0, so after one optimizer step the
    # whole network receives gradient: zero init is not a dead end.
    model = UNet(**SMALL)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, c_noise, target = torch.randn(2, 1, 14, 14), torch.rand(2), torch.randn(2, 1, 14, 14)
    for _ in range(2):
        opt.zero_grad()
        (model(x, c_noise) - target).square().mean().backward()
        opt.step()
    assert model.conv_in.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=30), r"image_size 30 is not divisible by 4, the UNet's downsampling factor "
                          r"\(2\*\*2 for channel_mult of length 3\); use 28 or 32"),
    (dict(base_channels=20, norm_groups=8), r"20 channels .* not divisible by norm_groups 8"),
    (dict(attn_resolutions=(7, 16)), r"attn_resolutions \[16\] never occur.*\[28, 14, 7\]"),
    (dict(base_channels=32, num_heads=5), r"not divisible by num_heads 5"),
    (dict(channel_mult=()), r"channel_mult must be a non-empty"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
])
def test_unet_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        UNet(**kwargs)


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 32, 32), (1, 28, 28)])
def test_unet_wrong_input_shape_names_expected_and_got(shape):
    with pytest.raises(ValueError, match=re.escape(f"expected input of shape [B, 1, 28, 28], got {list(shape)}")):
        UNet()(torch.randn(shape), torch.zeros(shape[0]))


def test_unet_labels_for_unconditional_net_is_an_error():
    with pytest.raises(ValueError, match=r"given conditioning \['y'\] it does not read \(it reads none\)"):
        UNet(**SMALL)(torch.randn(2, 1, 14, 14), torch.zeros(2), {"y": torch.tensor([1, 2])})


def test_unet_wrong_c_noise_shape_is_an_error():
    with pytest.raises(ValueError, match=r"c_noise must have shape \[2\]"):
        UNet(**SMALL)(torch.randn(2, 1, 14, 14), torch.zeros(3))


def test_mlp_shapes_conditioning_and_zero_init():
    x = torch.randn(5, 2)
    assert torch.equal(MLP()(x, torch.rand(5)), torch.zeros(5, 2))
    model = perturbed(MLP(dim=3, hidden=32, depth=2, num_classes=4))
    x = torch.randn(1, 3).expand(3, -1)
    out = model(x, torch.tensor([1.0, 500.0, 500.0]), {"y": torch.tensor([4, 4, 1])})
    assert out.shape == (3, 3)
    assert not torch.allclose(out[0], out[1], atol=1e-4)  # noise level matters
    assert not torch.allclose(out[1], out[2], atol=1e-4)  # class matters
    assert torch.allclose(model(x[:1], torch.tensor([500.0])), out[1:2], atol=1e-6)  # None = null
    with pytest.raises(ValueError, match=r"MLP expected input of shape \[B, 3\], got \[5, 2\]"):
        model(torch.randn(5, 2), torch.rand(5))


def test_mlp_gradients_reach_first_layer():
    model = perturbed(MLP()).train()
    model(torch.randn(8, 2), torch.rand(8) * 1000).square().mean().backward()
    assert model.layers[0].weight.grad.abs().sum() > 0


def test_build_network_registry_and_errors():
    assert {"unet", "mlp", "noisy_classifier", "vae_mlp", "vae_conv"} <= set(NETWORKS)
    assert isinstance(build_network("mlp", hidden=16), MLP)
    assert isinstance(build_network("unet", **SMALL), UNet)
    with pytest.raises(ConfigError, match=r"unknown network 'transformer'; choose one of \[.*'mlp', 'noisy_classifier', 'unet'.*\]"):
        build_network("transformer")
    with pytest.raises(ConfigError, match=r"network 'unet' got unexpected argument\(s\) \['channels'\]"):
        build_network("unet", channels=64)
