"""Nearest-neighbour x2 upsampling followed by a 3x3 convolution, computed at the input's resolution.

``nearest_up_conv3x3(x, weight, bias)`` equals
``F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` exactly (up
to float rounding) but does about half the multiply-adds and never materialises the upsampled
tensor. The upsampled image repeats each input pixel in a 2x2 block, so each of the four output
phases ``(a, b)`` (row parity, column parity) sees only a 2x2 input window: the 3x3 kernel collapses
to a 2x2 one whose taps are sums of the original taps. Along one axis, with ``k = (k[-1], k[0],
k[+1])`` and output ``2i + a``:

    a = 0: rows (i-1, i)   with taps (k[-1], k[0] + k[+1])
    a = 1: rows (i, i+1)   with taps (k[-1] + k[0], k[+1])

One convolution with the four collapsed kernels stacked as ``4 * out_channels`` outputs, padding 1,
gives every phase on an ``(H+1) x (W+1)`` grid; phase ``(a, b)`` is its window starting at
``(a, b)``. ``_Interleave`` writes the four windows into the ``2H x 2W`` output (a C++ kernel
on CPU channels_last tensors, see ``genmodels.nn.fused``). Per output pixel
that is 4 taps instead of 9, on a grid of ``(H+1)(W+1)`` instead of ``4HW`` positions.

The weights are still the 3x3 ``nn.Conv2d`` ones (state dicts unchanged); gradients flow to them
through the tap sums. ``reference`` is the textbook form, kept for tests and for counting the
network's nominal FLOPs (benchmarks/train_throughput.py).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from genmodels.nn import fused

PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))  # (row parity, column parity); index = 2 * a + b


def reference(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The textbook form: upsample, then a 3x3 convolution with padding 1."""
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


def collapsed_kernels(weight: Tensor) -> Tensor:
    """``[O, I, 3, 3]`` -> ``[4 * O, I, 2, 2]``: the 2x2 kernel of each output phase, phase-major."""
    def collapse(k: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        before, centre, after = k.unbind(dim)
        return torch.stack([before, centre + after], dim), torch.stack([before + centre, after], dim)

    rows = collapse(weight, 2)  # each [O, I, 2, 3]
    return torch.cat([collapse(rows[a], 3)[b] for a, b in PHASES])


def nearest_up_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``reference(x, weight, bias)`` for ``x [B, I, H, W]``, ``weight [O, I, 3, 3]``: ``[B, O, 2H, 2W]``
    in ``x``'s memory format."""
    if weight.shape[2:] != (3, 3) or x.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"nearest_up_conv3x3 needs x [B, {weight.shape[1]}, H, W] and a 3x3 weight, "
                         f"got x {list(x.shape)} and weight {list(weight.shape)}")
    phases = F.conv2d(x, collapsed_kernels(weight), None if bias is None else bias.repeat(4), padding=1)
    if fused.applies(phases):  # the C++ copy (channels_last on a CPU), else four strided PyTorch copies
        return _InterleaveKernel.apply(phases)
    return _Interleave.apply(phases)


def _phase_grid(y: Tensor) -> Tensor:
    """View ``[B, O, 2H, 2W]`` as ``[B, O, H, 2, W, 2]`` (any memory format; no copy)."""
    return y.unflatten(3, (y.shape[3] // 2, 2)).unflatten(2, (y.shape[2] // 2, 2))


def _format_of(t: Tensor) -> torch.memory_format:
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class _Interleave(torch.autograd.Function):
    """``[B, 4O, H+1, W+1]`` phase outputs -> ``[B, O, 2H, 2W]``: output pixel ``(2i+a, 2j+b)`` is
    phase ``(a, b)`` at ``(i+a, j+b)``. A copy each way; its backward is made of differentiable ops."""

    @staticmethod
    def forward(ctx, phases: Tensor) -> Tensor:
        B, C4, H1, W1 = phases.shape
        O, H, W = C4 // 4, H1 - 1, W1 - 1
        fmt = _format_of(phases)
        y = torch.empty(B, O, 2 * H, 2 * W, dtype=phases.dtype, device=phases.device, memory_format=fmt)
        grid = _phase_grid(y)
        for p, (a, b) in enumerate(PHASES):
            grid[:, :, :, a, :, b].copy_(phases[:, p * O:(p + 1) * O, a:a + H, b:b + W])
        ctx.fmt = fmt
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        B, O, H2, W2 = grad.shape
        H, W = H2 // 2, W2 // 2
        out = torch.empty(B, 4 * O, H + 1, W + 1, dtype=grad.dtype, device=grad.device, memory_format=ctx.fmt)
        grid = _phase_grid(grad)
        for p, (a, b) in enumerate(PHASES):
            block = out[:, p * O:(p + 1) * O]
            block[:, :, a:a + H, b:b + W] = grid[:, :, :, a, :, b]
            # the row and column this phase's window leaves out received no gradient
            block[:, :, H * (1 - a)] = 0
            block[:, :, :, W * (1 - b)] = 0
        return out


class _InterleaveKernel(torch.autograd.Function):
    """``_Interleave`` by the C++ kernel (``csrc/phase_interleave.cpp``); its backward is not itself
    differentiable, like the other fused kernels'."""

    @staticmethod
    def forward(ctx, phases: Tensor) -> Tensor:
        return fused.load().interleave_forward(phases)

    @staticmethod
    @fused.first_order_only
    def backward(ctx, grad: Tensor) -> Tensor:
        return fused.load().interleave_backward(grad)
