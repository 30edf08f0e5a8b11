"""Optimizers shared by every family."""

import torch


def make_adamw(params, **options) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for these tensors (CPU since torch 2.4,
    CUDA): one call per step instead of ~10 ops per tensor (6.8 -> 1.8 ms per step for the
    1M-parameter UNet on 2 CPU cores; docs/BENCHMARKS.md), else the multi-tensor version."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, foreach=True, **options)
