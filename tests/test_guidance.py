"""Guidance wrappers: CFG's limits (w = 1 conditional, w = 0 unconditional) and its one batched
forward, the guidance interval, dynamic thresholding against a direct computation, classifier
guidance's score shift, label dropout's rate."""

import math

import pytest
import torch

from genmodels.cond import drop, null_value, nulled
from genmodels.diffusion import DiscreteDDPM, NetDenoiser, PARAMETERIZATIONS
from genmodels.diffusion.guidance import CFGDenoiser, ClassifierGuidance, DynamicThresholding
from genmodels.nn import UNet

NUM_CLASSES = 3


class CountingDenoiser(torch.nn.Module):
    """A class-conditional denoiser with a distinct answer per label (null = NUM_CLASSES)."""

    num_classes = NUM_CLASSES

    def __init__(self):
        super().__init__()
        self.calls, self.batch_sizes = 0, []

    def forward(self, x, sigma, cond=None):
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        return torch.tanh(x) * (1 + cond["y"].reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype))


def null_class(cond):
    return {**cond, "y": torch.full_like(cond["y"], NUM_CLASSES)}


def setup_cfg():
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 1])
    return CountingDenoiser(), x, y


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_cfg_is_the_affine_combination_with_its_limits(w):
    inner, x, y = setup_cfg()
    guided = CFGDenoiser(inner, w, nulled(inner, ["y"]))(x, torch.tensor(2.0), {"y": y})
    cond, uncond = inner(x, 2.0, {"y": y}), inner(x, 2.0, {"y": torch.full_like(y, NUM_CLASSES)})
    torch.testing.assert_close(guided, uncond + w * (cond - uncond))
    if w == 1.0:
        torch.testing.assert_close(guided, cond)
    if w == 0.0:
        torch.testing.assert_close(guided, uncond)


def test_cfg_batches_cond_and_uncond_in_one_forward_and_skips_it_at_w1():
    inner, x, y = setup_cfg()
    CFGDenoiser(inner, 3.0, null_class)(x, torch.tensor(1.0), {"y": y})
    assert inner.calls == 1 and inner.batch_sizes == [8]
    CFGDenoiser(inner, 1.0, null_class)(x, torch.tensor(1.0), {"y": y})
    assert inner.calls == 2 and inner.batch_sizes[-1] == 4


def test_guidance_interval_guides_only_inside_it():
    inner, x, y = setup_cfg()
    cfg = CFGDenoiser(inner, 4.0, null_class, interval=(0.5, 2.0))
    cond = inner(x, 1.0, {"y": y})
    torch.testing.assert_close(cfg(x, torch.tensor(5.0), {"y": y}), cond)  # above: conditional only
    torch.testing.assert_close(cfg(x, torch.tensor(0.1), {"y": y}), cond)  # below: conditional only
    assert not torch.allclose(cfg(x, torch.tensor(1.0), {"y": y}), cond)


def test_cfg_on_a_real_unet_through_the_adapter_matches_two_separate_passes():
    torch.manual_seed(0)
    net = UNet(image_size=8, base_channels=16, channel_mult=(1, 2), attn_resolutions=(), num_classes=NUM_CLASSES).eval()
    path = DiscreteDDPM(schedule="cosine")
    d = NetDenoiser(net, path, PARAMETERIZATIONS["v"])
    x = torch.randn(3, 1, 8, 8)
    y = torch.tensor([0, 2, 1])
    with torch.no_grad():
        cond, uncond = d(x, 3.0, {"y": y}), d(x, 3.0, {"y": torch.full_like(y, NUM_CLASSES)})
        guided = CFGDenoiser(d, 2.5, nulled(net, ["y"]))(x, torch.tensor(3.0, dtype=torch.float64), {"y": y})
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_dynamic_thresholding_clips_at_the_percentile_and_rescales():
    g = torch.Generator().manual_seed(0)
    x0 = torch.cat([torch.rand(1, 1000, generator=g) * 0.9,  # already in [-1, 1]: untouched
                    torch.randn(1, 1000, generator=g) * 3])
    wrapped = DynamicThresholding(lambda x, sigma, cond=None: x0, percentile=0.9)
    out = wrapped(torch.zeros(2, 1000), 1.0)
    torch.testing.assert_close(out[0], x0[0])
    s = float(torch.quantile(x0[1].abs(), 0.9))
    assert s > 1
    torch.testing.assert_close(out[1], x0[1].clamp(-s, s) / s)
    assert out[1].abs().max() <= 1 + 1e-6


def test_classifier_guidance_adds_sigma_squared_times_the_log_likelihood_gradient():
    # A linear classifier: log p(y | x) has gradient W_y - sum_k p_k W_k, computable by hand.
    W = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    classifier = lambda x, sigma: x @ W.T  # noqa: E731
    base = lambda x, sigma, cond=None: 0.5 * x  # noqa: E731
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    with torch.inference_mode():  # as samplers run
        out = ClassifierGuidance(base, classifier, scale=2.0, denoiser_keys=())(
            x, torch.tensor(3.0, dtype=torch.float64), {"y": y})
    p = torch.softmax(x @ W.T, dim=1)
    grad = W[y] - p @ W
    torch.testing.assert_close(out, 0.5 * x + 2.0 * 9.0 * grad, rtol=1e-5, atol=1e-5)  # logits in fp32


def test_label_dropout_replaces_labels_by_the_null_class_at_its_rate():
    net = UNet(image_size=8, base_channels=16, channel_mult=(1, 2), attn_resolutions=(), num_classes=10)
    y = torch.arange(10).repeat(2000)
    null = lambda key, value: null_value(net, key, value)  # noqa: E731
    dropped = drop({"y": y}, {"y": 0.2}, null, generator=torch.Generator().manual_seed(0))["y"]
    rate = (dropped == 10).float().mean().item()
    assert abs(rate - 0.2) < 4 * math.sqrt(0.2 * 0.8 / len(y))
    kept = dropped != 10
    assert torch.equal(dropped[kept], y[kept])
    assert torch.equal(drop({"y": y}, {}, null, generator=torch.Generator())["y"], y)
    # the same decisions as a direct draw: one uniform per sample against the rate
    direct = torch.rand(y.shape, generator=torch.Generator().manual_seed(0)) < 0.2
    assert torch.equal(dropped == 10, direct | (y == 10))
