"""The upsample-then-3x3-conv computed as four 2x2 phase convolutions at the coarse resolution,
against the textbook form (nearest upsampling, then the 3x3 conv): outputs and all gradients in
double precision, both memory formats, second derivatives, the whole UNet, and the FLOPs it saves."""

from unittest import mock

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from genmodels.nn import fused, layers
from genmodels.nn.unet import UNet
from genmodels.nn import upsample_conv
from genmodels.nn.upsample_conv import PHASES, collapsed_kernels, nearest_up_conv3x3, reference

CL = torch.channels_last


def _case(batch, cin, cout, h, w, *, bias=True, fmt=torch.contiguous_format, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, h, w, generator=g, dtype=torch.float64).contiguous(memory_format=fmt)
    weight = torch.randn(cout, cin, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(cout, generator=g, dtype=torch.float64) if bias else None
    return [t.requires_grad_() if t is not None else None for t in (x, weight, b)]


@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 5), (1, 4, 4, 1, 1), (3, 8, 2, 4, 6), (2, 16, 8, 7, 7)])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_upsample_then_conv_with_gradients(shape, fmt, bias):
    x, weight, b = _case(*shape, bias=bias, fmt=fmt)
    ours, textbook = nearest_up_conv3x3(x, weight, b), reference(x, weight, b)
    assert ours.shape == textbook.shape == (shape[0], shape[2], 2 * shape[3], 2 * shape[4])
    torch.testing.assert_close(ours, textbook, rtol=1e-12, atol=1e-12)
    if shape[3] * shape[4] > 1:  # a 1x1 image is contiguous in both formats; conv then picks one
        assert ours.is_contiguous(memory_format=fmt)
    upstream = torch.randn_like(textbook)
    inputs = [t for t in (x, weight, b) if t is not None]
    for got, want in zip(torch.autograd.grad(ours, inputs, upstream), torch.autograd.grad(textbook, inputs, upstream)):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


def test_collapsed_kernel_of_a_single_tap_lands_where_the_upsampled_pixel_does():
    # a kernel with one non-zero tap at (dy, dx) reads upsampled pixel (p + dy, q + dx), i.e. input
    # pixel ((p + dy) // 2, (q + dx) // 2); read off the phase kernels by hand for tap (-1, +1)
    weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    weight[0, 0, 0, 2] = 1.0
    k = collapsed_kernels(weight)[:, 0]  # [4, 2, 2]
    expected = {(0, 0): (0, 1), (0, 1): (0, 1), (1, 0): (0, 1), (1, 1): (0, 1)}
    for p, (a, b) in enumerate(PHASES):
        nonzero = k[p].nonzero().tolist()
        # rows: a=0 window (i-1, i), tap -1 -> i-1 = window row 0; a=1 window (i, i+1), -1 -> i = row 0
        # cols: b=0 window (j-1, j), tap +1 -> j = col 1;        b=1 window (j, j+1), +1 -> j+1 = col 1
        assert nonzero == [list(expected[(a, b)])] and k[p].sum() == 1


def test_second_derivatives_match():
    x, weight, b = _case(1, 2, 3, 3, 4)
    assert torch.autograd.gradcheck(nearest_up_conv3x3, (x, weight, b))
    assert torch.autograd.gradgradcheck(nearest_up_conv3x3, (x, weight, b))


def test_inference_mode_and_float32_channels_last():
    x, weight, b = (t.detach().float() for t in _case(4, 64, 32, 14, 14, fmt=CL))
    with torch.inference_mode():
        ours = nearest_up_conv3x3(x, weight, b)
    torch.testing.assert_close(ours, reference(x, weight, b), rtol=1e-4, atol=1e-4)
    assert ours.is_contiguous(memory_format=CL)


def test_half_the_flops_of_the_textbook_form():
    x, weight, b = (t.detach() for t in _case(2, 8, 4, 14, 14))
    counts = []
    for fn in (nearest_up_conv3x3, reference):
        with FlopCounterMode(display=False) as counter:
            fn(x, weight, b)
        counts.append(counter.get_total_flops())
    # 4 phases x 4 taps on a 15 x 15 grid against 9 taps on 28 x 28
    assert counts[0] / counts[1] == pytest.approx((4 * 4 * 15 * 15) / (9 * 28 * 28))


@pytest.mark.parametrize("weight_shape", [(2, 3, 2, 2), (2, 4, 3, 3)])
def test_wrong_shapes_are_named(weight_shape):
    with pytest.raises(ValueError, match=r"x \[B, \d+, H, W\] and a 3x3 weight, got x \[1, 3, 4, 4\]"):
        nearest_up_conv3x3(torch.zeros(1, 3, 4, 4), torch.zeros(weight_shape), None)


def test_unet_equals_textbook_upsampling():
    torch.manual_seed(0)
    net = UNet(image_size=28, base_channels=16, channel_mult=(1, 2, 2), attn_resolutions=(7,), num_classes=3)
    with torch.no_grad():  # zero-initialised output layers would hide differences
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net = net.to(memory_format=CL)
    x = torch.randn(3, 1, 28, 28).contiguous(memory_format=CL).requires_grad_()
    t, y = torch.rand(3) * 1000, torch.tensor([0, 1, 3])

    def run():
        net.zero_grad()
        out = net(x, t, {"y": y})
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in net.named_parameters()}

    ours = run()
    x.grad = None
    with mock.patch.object(layers, "nearest_up_conv3x3", side_effect=reference) as textbook_path:
        textbook = run()
    assert textbook_path.call_count == sum(isinstance(m, layers.Upsample) for m in net.modules()) == 2
    torch.testing.assert_close(ours[0], textbook[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours[1], textbook[1], rtol=1e-4, atol=1e-5)
    for name in ours[2]:  # float32 sums: entries near 0 of a gradient up to ~30 differ by ~1e-5 on the PyTorch path
        scale = textbook[2][name].abs().max().item()
        torch.testing.assert_close(ours[2][name], textbook[2][name], rtol=1e-3, atol=max(1e-5, 2e-6 * scale), msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_interleave_kernel_equals_the_pytorch_copies(dtype, monkeypatch, fused_kernels):
    calls = []
    apply = upsample_conv._InterleaveKernel.apply
    monkeypatch.setattr(upsample_conv._InterleaveKernel, "apply", lambda *a: calls.append(1) or apply(*a))
    x, weight, b = (t.detach().to(dtype).requires_grad_() for t in _case(3, 6, 5, 4, 7, fmt=CL))
    upstream = torch.randn(3, 5, 8, 14, dtype=dtype)
    results = []
    for kernels in ("1", "0"):
        monkeypatch.setenv(fused.ENV, kernels)
        out = nearest_up_conv3x3(x, weight, b)
        results.append([out, *torch.autograd.grad(out, (x, weight, b), upstream)])
    assert len(calls) == 1
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same copies: bit-identical


def test_second_derivatives_through_the_kernel_are_refused_not_wrong(fused_kernels):
    x, weight, b = (t.detach().float().requires_grad_() for t in _case(3, 6, 5, 4, 7, fmt=CL))
    out = nearest_up_conv3x3(x, weight, b)
    assert out.grad_fn.name() == "_InterleaveKernelBackward"
    with pytest.raises(RuntimeError, match="no second derivative.*GENMODELS_FUSED_KERNELS=0"):
        torch.autograd.grad(out.square().sum(), x, create_graph=True)
