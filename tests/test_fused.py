"""The fused GroupNorm + scale-shift + SiLU kernel and the output-conv kernel against their PyTorch
references: gradcheck in double precision on both channel paths (compile-time and runtime widths),
float32 agreement at the demo UNet's shapes, numerical stability, the whole UNet with the kernels on
and off, and the fallbacks. How they are found: run time only imports a prebuilt extension (never
compiles), says once when there is none, and builds only when asked (build-kernels, =1)."""

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils import cpp_extension

from genmodels.cli import main
from genmodels.errors import KernelBuildError
from genmodels.nn import fused, upsample_conv
from genmodels.nn.layers import ResBlock, SelfAttention2d
from genmodels.nn.unet import UNet
from genmodels.paths import cache_dir

CL = torch.channels_last
COMPILE = fused._compile


@pytest.fixture(autouse=True)
def kernel(request):
    """The real, prebuilt kernels (conftest's fused_kernels), for every test but those that set up a
    process without them (``fresh``)."""
    if "fresh" not in request.fixturenames:
        return request.getfixturevalue("fused_kernels")


@pytest.fixture
def fresh(monkeypatch):
    """As in a new process: nothing loaded or said yet, the default mode; compiling fails the test."""
    monkeypatch.setattr(fused, "_module", None)
    monkeypatch.setattr(fused, "_unavailable", None)
    monkeypatch.delenv(fused.ENV, raising=False)

    def compiler(*args, **kwargs):
        pytest.fail("the kernels were compiled at run time")

    monkeypatch.setattr(fused, "_compile", compiler)
    monkeypatch.setattr(cpp_extension, "load", compiler)


@pytest.fixture
def unbuilt(fresh, monkeypatch, tmp_path):
    """A fresh process with an empty kernels dir: nothing was built."""
    monkeypatch.setenv("GENMODELS_KERNELS_DIR", str(tmp_path / "ext"))
    return tmp_path / "ext"


def _norm(channels: int, groups: int, dtype=torch.float32, seed: int = 0) -> nn.GroupNorm:
    norm = nn.GroupNorm(groups, channels).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random affine parameters, so that weight and bias gradients matter
        norm.weight.copy_(1 + 0.5 * torch.randn(channels, generator=g, dtype=dtype))
        norm.bias.copy_(0.5 * torch.randn(channels, generator=g, dtype=dtype))
    return norm


def _inputs(batch, channels, h, w, dtype, film, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, channels, h, w, generator=g, dtype=dtype) * 2 + 0.7).contiguous(memory_format=CL)
    scale = 0.3 * torch.randn(batch, channels, generator=g, dtype=dtype) if film else None
    shift = torch.randn(batch, channels, generator=g, dtype=dtype) if film else None
    return x, scale, shift


@pytest.mark.parametrize("channels,groups", [(8, 2), (12, 3)])  # 8: compile-time width; 12: runtime
@pytest.mark.parametrize("film", [False, True])
@pytest.mark.parametrize("silu", [False, True])
def test_gradcheck_double(channels, groups, film, silu):
    norm = _norm(channels, groups, torch.float64)
    x, scale, shift = _inputs(3, channels, 4, 5, torch.float64, film)
    inputs = [x.requires_grad_(), norm.weight, norm.bias] + ([scale.requires_grad_(), shift.requires_grad_()]
                                                              if film else [])

    def fn(x, weight, bias, *modulation):
        assert fused.applies(x)
        return fused._GroupNormAct.apply(x, groups, weight, bias, *(modulation or (None, None)), silu, norm.eps)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels,size", [(32, 28), (64, 14), (128, 7), (96, 7)])
def test_float32_matches_reference_at_unet_shapes(channels, size):
    norm = _norm(channels, 8)
    x, scale, shift = _inputs(6, channels, size, size, torch.float32, film=True, seed=channels)
    grad_out = torch.randn(x.shape).contiguous(memory_format=CL)
    results = []
    for fn in (fused.group_norm_act, fused.reference):
        leaves = [x.clone().requires_grad_(), scale.clone().requires_grad_(), shift.clone().requires_grad_()]
        norm.zero_grad()
        out = fn(leaves[0], norm, leaves[1], leaves[2])
        out.backward(grad_out)
        results.append([out] + [t.grad for t in leaves] + [norm.weight.grad.clone(), norm.bias.grad.clone()])
    fast, ref = results
    assert fast[0].is_contiguous(memory_format=CL)
    for a, b, name in zip(fast, ref, ["out", "dx", "dscale", "dshift", "dweight", "dbias"]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item()), name


def test_group_norm_without_affine_parameters():
    norm = nn.GroupNorm(4, 16, affine=False)
    x, scale, shift = _inputs(3, 16, 5, 5, torch.float64, film=True, seed=3)
    norm = norm.double()
    assert torch.autograd.gradcheck(
        lambda x, s, t: fused.group_norm_act(x, norm, s, t), (x.requires_grad_(), scale.requires_grad_(),
                                                              shift.requires_grad_()), eps=1e-6, atol=1e-6)
    assert torch.allclose(fused.group_norm_act(x, norm, scale, shift), fused.reference(x, norm, scale, shift))


def test_the_kernel_refuses_inputs_it_would_misread(kernel):
    x, scale, shift = _inputs(2, 16, 6, 6, torch.float32, film=True)
    weight, bias = torch.ones(16), torch.zeros(16)
    with pytest.raises(RuntimeError, match="channels_last"):
        kernel.forward(x.contiguous(), 4, weight, bias, None, None, True, 1e-5)
    with pytest.raises(RuntimeError, match="not divisible by 5 groups"):
        kernel.forward(x, 5, weight, bias, None, None, True, 1e-5)
    with pytest.raises(RuntimeError, match="weight/bias"):
        kernel.forward(x, 4, torch.ones(8), bias, None, None, True, 1e-5)
    with pytest.raises(RuntimeError, match="scale/shift"):
        kernel.forward(x, 4, weight, bias, scale.double(), shift, True, 1e-5)


def test_statistics_are_stable_for_large_offsets():
    """A large common offset must not wash out a small variance: the kernel centres before it sums.
    The bound is what float32 can hold (the mean itself is rounded to 1e-3 here); PyTorch's own
    float32 GroupNorm was off by more than 1 in the output on this input (torch 2.13)."""
    norm = _norm(32, 8, seed=1)
    x, _, _ = _inputs(4, 32, 14, 14, torch.float64, film=False)
    x = (1e4 + 1e-2 * x).float().contiguous(memory_format=CL)  # std 0.02 on an offset of 10^4
    xd = x.double().requires_grad_()
    exact = fused.reference(xd, norm.double(), silu=True)
    (exact_dx,) = torch.autograd.grad(exact.sum(), xd)
    xf = x.clone().requires_grad_()
    out = fused.group_norm_act(xf, norm.float(), silu=True)
    (dx,) = torch.autograd.grad(out.sum(), xf)
    assert (out.double() - exact).abs().max() < 0.1
    assert (dx.double() - exact_dx).abs().max() < 0.1 * exact_dx.abs().max()


def test_unet_with_kernel_equals_unet_without(monkeypatch):
    torch.manual_seed(0)
    net = UNet(image_size=16, base_channels=16, channel_mult=(1, 2), attn_resolutions=(8,), num_classes=3)
    with torch.no_grad():  # zero-initialised output layers would hide most of the network
        for p in net.parameters():
            if not p.any():
                p.normal_(std=0.05)
    net = net.to(memory_format=CL)
    x = torch.randn(4, 1, 16, 16).contiguous(memory_format=CL)
    t, y = torch.tensor([1.0, 200.0, 500.0, 999.0]), torch.tensor([0, 1, 2, 3])

    def run():
        net.zero_grad()
        xi = x.clone().requires_grad_()
        out = net(xi, t, {"y": y})
        # a random upstream: with a symmetric one the output bias's gradient cancels to rounding noise
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        return [out, xi.grad] + [p.grad.clone() for p in net.parameters()]

    calls, conv_calls = [], []
    apply, conv_apply = fused._GroupNormAct.apply, fused._OutputConv.apply
    monkeypatch.setattr(fused._GroupNormAct, "apply", lambda *a: calls.append(1) or apply(*a))
    monkeypatch.setattr(fused._OutputConv, "apply", lambda *a: conv_calls.append(1) or conv_apply(*a))
    norms = sum(2 if isinstance(m, ResBlock) else 1 for m in net.modules()
                if isinstance(m, ResBlock | SelfAttention2d)) + 1  # + the output norm
    fast = run()
    assert len(calls) == norms and len(conv_calls) == 1
    monkeypatch.setenv(fused.ENV, "0")
    ref = run()
    assert len(calls) == norms and len(conv_calls) == 1
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(b.abs().max().item(), 1.0))


def test_sampling_under_inference_mode_uses_the_kernel():
    norm = _norm(32, 8)
    x, scale, shift = _inputs(2, 32, 7, 7, torch.float32, film=True)
    with torch.inference_mode():
        got = fused.group_norm_act(x, norm, scale, shift)
    assert torch.allclose(got, fused.reference(x, norm, scale, shift), atol=1e-5)


def test_fallbacks_give_the_reference(monkeypatch):
    norm = _norm(16, 4)
    x, scale, shift = _inputs(2, 16, 6, 6, torch.float32, film=True)
    nchw = x.contiguous()
    assert not fused.applies(nchw) and fused.applies(x)
    assert torch.equal(fused.group_norm_act(nchw, norm, scale, shift), fused.reference(nchw, norm, scale, shift))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused.applies(x)
    monkeypatch.setenv(fused.ENV, "0")
    assert not fused.applies(x) and fused.status().startswith("off")
    monkeypatch.setenv(fused.ENV, "sometimes")
    with pytest.raises(Exception, match="GENMODELS_FUSED_KERNELS must be auto, 0 or 1"):
        fused.mode()
    with pytest.raises(ValueError, match="scale and shift together"):
        fused.group_norm_act(x, norm, scale, None)


def _forwards_without_kernels(monkeypatch, repeats=3):
    """Several forwards through every kernel's entry point (and a UNet), checked to run PyTorch ops."""
    for cls in (fused._GroupNormAct, fused._OutputConv, upsample_conv._InterleaveKernel):
        monkeypatch.setattr(cls, "apply", lambda *a: pytest.fail("a kernel ran"))
    norm, conv = _norm(16, 4), _conv(16, 1, torch.float32)
    x, scale, shift = _inputs(2, 16, 6, 6, torch.float32, film=True)
    net = UNet(image_size=16, base_channels=16, channel_mult=(1, 2), attn_resolutions=(8,)).to(memory_format=CL)
    for _ in range(repeats):
        assert not fused.applies(x)
        assert torch.equal(fused.group_norm_act(x, norm, scale, shift), fused.reference(x, norm, scale, shift))
        assert torch.equal(fused.output_conv(x, conv), conv(x))
        with torch.no_grad():
            net(torch.randn(2, 1, 16, 16).contiguous(memory_format=CL), torch.tensor([3.0, 500.0]))


def test_without_a_build_a_forward_never_compiles_and_says_so_once(unbuilt, monkeypatch, capfd):
    _forwards_without_kernels(monkeypatch)
    assert fused.load() is None and fused.status().startswith("not built")
    out, err = capfd.readouterr()
    assert out == "" and err == fused.NOT_BUILT + "\n"
    assert "genmodels build-kernels" in err
    assert not unbuilt.exists()  # not even a build directory made


def test_kernels_off_say_nothing(unbuilt, monkeypatch, capfd):
    monkeypatch.setenv(fused.ENV, "0")
    _forwards_without_kernels(monkeypatch)
    assert fused.load() is None and fused.status().startswith("off")
    assert capfd.readouterr() == ("", "")


def test_required_kernels_are_built_when_missing_and_an_impossible_build_raises(unbuilt, monkeypatch, capfd):
    norm = _norm(16, 4)
    x, _, _ = _inputs(2, 16, 6, 6, torch.float32, film=False)
    assert fused.load() is None  # auto: noted, then asked for below
    monkeypatch.setenv(fused.ENV, "1")

    def no_compiler():
        raise KernelBuildError("no C++ compiler: 'c++' is not on PATH; install one (apt-get install g++)")

    monkeypatch.setattr(fused, "_compile", no_compiler)
    with pytest.raises(KernelBuildError, match=r"GENMODELS_FUSED_KERNELS=1 but .*no C\+\+ compiler.*g\+\+"):
        fused.group_norm_act(x, norm)
    built = object()
    monkeypatch.setattr(fused, "_compile", lambda: built)
    assert fused.load() is built
    assert capfd.readouterr().err == fused.NOT_BUILT + "\n"  # said once, by the auto-mode load


def test_an_unloadable_build_falls_back_once_and_build_replaces_it(unbuilt, monkeypatch, capfd):
    fused.build_dir().mkdir(parents=True)
    fused.library().write_bytes(b"not a shared library")
    _forwards_without_kernels(monkeypatch, repeats=2)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "could not be loaded" in err and "genmodels build-kernels" in err
    built = object()
    monkeypatch.setattr(fused, "_compile", lambda: built)
    assert fused.build() is built and not fused.library().exists()  # removed, so that ninja relinks it


def test_load_imports_the_shared_prebuilt_kernels_without_compiling(fused_kernels, fresh, capfd):
    # the test session's cache is a fresh temp dir; the kernels stay where scripts/setup built them
    assert not fused.build_dir().is_relative_to(cache_dir())
    module = fused.load()
    assert module is not None and Path(module.__file__) == fused.library()
    assert fused.status() == "on" and fused.applies(torch.zeros(1, 8, 2, 2).contiguous(memory_format=CL))
    assert capfd.readouterr() == ("", "")


def test_build_kernels_reports_already_built(fused_kernels, fresh, capsys):
    try:
        main(["build-kernels"])
    except SystemExit as e:
        assert e.code in (0, None)
    out, err = capsys.readouterr()
    assert out == f"fused CPU kernels: on (already built in {fused.build_dir()})\n" and err == ""


def test_build_kernels_names_a_missing_compiler(unbuilt, monkeypatch, capsys):
    monkeypatch.setattr(fused, "_compile", COMPILE)  # the real one; cpp_extension.load still fails the test
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(SystemExit) as exit_:
        main(["build-kernels"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert err == ("error: no C++ compiler: '/nonexistent/c++' is not on PATH; install one (apt-get install g++), "
                   "then run genmodels build-kernels\n")


def test_second_derivatives_are_refused_not_wrong():
    # torch's once_differentiable would let grad(..., inputs=[weight]) prune its guard and return a
    # second derivative missing every term through the kernel; create_graph must fail at once
    norm = _norm(16, 4)
    x, _, _ = _inputs(2, 16, 6, 6, torch.float32, film=False)
    x.requires_grad_()
    with pytest.raises(RuntimeError, match="no second derivative.*_GroupNormAct.*GENMODELS_FUSED_KERNELS=0"):
        torch.autograd.grad(fused.group_norm_act(x, norm).square().sum(), x, create_graph=True)
    conv = _conv(16, 1, torch.float32)
    with pytest.raises(RuntimeError, match="no second derivative.*_OutputConv"):
        torch.autograd.grad(fused.output_conv(x, conv).square().sum(), x, create_graph=True)
    (g,) = torch.autograd.grad(fused.group_norm_act(x, norm).square().sum(), x)  # first order is fine
    assert g.abs().sum() > 0


def _conv(cin, cout, dtype, bias=True, seed=0):
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=dtype))
        if bias:
            conv.bias.copy_(torch.randn(cout, generator=g, dtype=dtype))
    return conv


@pytest.mark.parametrize("cin,cout,h,w", [(32, 1, 5, 6), (12, 3, 4, 3), (40, 8, 1, 1), (16, 2, 1, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_output_conv_gradcheck_double(cin, cout, h, w, bias):
    # 32 / 16: compile-time widths in whole vectors; 12 and 40: runtime width with a scalar tail
    conv = _conv(cin, cout, torch.float64, bias)
    x = torch.randn(3, cin, h, w, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    weight = conv.weight.detach().permute(0, 2, 3, 1).contiguous().requires_grad_()
    b = conv.bias.detach().clone().requires_grad_() if bias else None
    assert torch.autograd.gradcheck(lambda *a: fused._OutputConv.apply(*a), (x, weight, b))
    torch.testing.assert_close(fused.output_conv(x, conv), conv(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cout", [1, 3])
def test_output_conv_float32_matches_onednn_at_the_demo_shape(cout):
    conv = _conv(32, cout, torch.float32)
    x = torch.randn(8, 32, 28, 28).contiguous(memory_format=CL).requires_grad_()
    got, want = fused.output_conv(x, conv), conv(x)
    assert got.grad_fn.name() == "_OutputConvBackward" and got.is_contiguous(memory_format=CL)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    upstream = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (x, conv.weight, conv.bias), upstream),
                    torch.autograd.grad(want, (x, conv.weight, conv.bias), upstream)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3 * b.abs().max().item())


@pytest.mark.parametrize("conv", [nn.Conv2d(8, 9, 3, padding=1), nn.Conv2d(8, 1, 3, padding=2, dilation=2),
                                  nn.Conv2d(8, 1, 3, stride=2, padding=1), nn.Conv2d(8, 1, 1),
                                  nn.Conv2d(8, 1, 3, padding=1, padding_mode="reflect")])
def test_output_conv_leaves_other_convs_to_pytorch(conv, monkeypatch):
    monkeypatch.setattr(fused._OutputConv, "apply", lambda *a: pytest.fail("the kernel took a conv it does not do"))
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=CL)
    torch.testing.assert_close(fused.output_conv(x, conv), conv(x))


def test_output_conv_kernel_refuses_inputs_it_would_misread(kernel):
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=CL)
    with pytest.raises(RuntimeError, match="channels_last"):
        kernel.output_conv_forward(x.contiguous(), torch.zeros(1, 3, 3, 8), None)
    with pytest.raises(RuntimeError, match=r"weight must be contiguous \[O <= 8, 3, 3, 8\]"):
        kernel.output_conv_forward(x, torch.zeros(1, 3, 3, 4), None)
    with pytest.raises(RuntimeError, match="gradient must be"):
        kernel.output_conv_backward(torch.zeros(2, 2, 5, 5), x, torch.zeros(1, 3, 3, 8), True)
