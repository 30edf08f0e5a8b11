"""Low-rank adapters (LoRA, Hu et al. 2021, Eq. 3): a frozen weight ``W`` of a Linear or Conv2d
layer is used as ``W + (alpha / r) * B A`` with ``A [r, in(, kh, kw)]`` and ``B [out, r(, 1, 1)]``,
``B`` zero-initialised so a fresh adapter leaves the network unchanged. The factors have peft's
shapes (``lora_A``: a Linear/Conv2d from the input to r channels, ``lora_B``: a Linear/1x1 conv
from r to the output), so files convert key for key.

An adapter is a ``torch.nn.utils.parametrize`` parametrization of the layer's ``weight``: every
reader of ``.weight`` sees the adapted weight, including the C++ kernels and the phase-split
upsampling conv that read ``conv.weight`` instead of calling the layer (``fused.output_conv``,
``nn.layers.Upsample``); an adapter there is never bypassed. Several adapters on one layer
chain (each adds its delta). ``merge`` folds the delta into the stored weight (the forward then
reads it as it is, bit-identical to the unmerged forward), ``unmerge`` takes it out again.

    >>> adapters = inject(net, ["attn", "conv"], rank=4, alpha=4)    # {module name: LoraWeight}
    >>> merge(net); unmerge(net); set_scale(net, 0.5); bake(net)       # bake: plain layers again
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from .layers import CrossAttention2d, ResBlock, SelfAttention2d

ADAPTABLE = (nn.Linear, nn.Conv2d)


class LoraWeight(nn.Module):
    """One layer's adapter: ``forward(W) = W + multiplier * (alpha / rank) * B A`` (``W`` as it
    is while ``merged``). ``shape`` is the adapted weight's shape: ``[out, in]`` or ``[out, in,
    kh, kw]``."""

    def __init__(self, shape, *, rank: int, alpha: float, device=None, dtype=None):
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LoRA rank must be at least 1, got {rank}")
        out, inp, *kernel = shape
        self.shape, self.rank, self.alpha = tuple(shape), rank, float(alpha)
        self.lora_A = nn.Parameter(torch.empty(rank, inp, *kernel, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out, rank, *[1] * len(kernel), device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's (and nn.Linear's) default for A
        self.multiplier = 1.0  # set_scale: how much of the adapter is applied, on top of alpha / rank
        self.merged = False

    @property
    def scaling(self) -> float:
        return self.multiplier * self.alpha / self.rank

    def delta(self) -> Tensor:
        """``scaling * B A`` in the adapted weight's shape (for convs: sum over r of
        ``B[o, r] A[r, i, kh, kw]``, peft's conv delta)."""
        return self.scaling * (self.lora_B.flatten(1) @ self.lora_A.flatten(1)).view(self.shape)

    def forward(self, weight: Tensor) -> Tensor:
        return weight if self.merged else weight + self.delta()

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, merged={self.merged}"


# ---- which layers -----------------------------------------------------------------------------
def _attention_linear(name, module, parent) -> bool:
    return isinstance(module, nn.Linear) and isinstance(parent, (SelfAttention2d, CrossAttention2d))


# Short names for groups of layers; anything else is an fnmatch pattern over module names.
ALIASES = {
    "attn": _attention_linear,  # the q/k/v/qkv/kv/proj Linears of self- and cross-attention blocks
    "conv": lambda name, module, parent: isinstance(module, nn.Conv2d) and isinstance(parent, ResBlock),
    "linear": lambda name, module, parent: isinstance(module, nn.Linear),
    "all": lambda name, module, parent: isinstance(module, ADAPTABLE),
}


def parse_targets(targets) -> list[str]:
    """``"attn,conv"`` or ``["attn", "up.*"]`` -> a list of patterns."""
    if isinstance(targets, str):
        targets = targets.split(",")
    patterns = [t.strip() for t in targets if t.strip()]
    if not patterns:
        raise ConfigError(f"no LoRA targets given; name layers by alias ({', '.join(ALIASES)}) or module-name "
                          "pattern (e.g. 'mid.*')")
    return patterns


def adaptable_layers(net: nn.Module) -> dict[str, tuple[nn.Module, nn.Module]]:
    """{name: (layer, parent)} of every Linear and Conv2d of ``net`` not inside an adapter."""
    found = {}
    for parent_name, parent in net.named_modules():
        if isinstance(parent, (LoraWeight, parametrize.ParametrizationList)):
            continue
        for child_name, child in parent.named_children():
            if isinstance(child, ADAPTABLE):
                found[f"{parent_name}.{child_name}" if parent_name else child_name] = (child, parent)
    return found


def resolve_targets(net: nn.Module, targets) -> list[str]:
    """The names of ``net``'s Linear/Conv2d layers that ``targets`` (aliases or fnmatch patterns
    over module names) select, in module order; a pattern that selects nothing is a ConfigError."""
    layers = adaptable_layers(net)
    chosen = set()
    for pattern in parse_targets(targets):
        if pattern in ALIASES:
            hits = {n for n, (m, parent) in layers.items() if ALIASES[pattern](n, m, parent)}
        else:
            hits = {n for n in layers if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            names = list(layers)
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
            raise ConfigError(f"LoRA target '{pattern}' matches no Linear or Conv2d layer of the "
                              f"{type(net).__name__}; its layers: {shown or 'none'} (aliases: {', '.join(ALIASES)})")
        chosen |= hits
    return [n for n in layers if n in chosen]


# ---- inject, merge, unmerge ---------------------------------------------------------------------
def _layer(net: nn.Module, name: str) -> nn.Module:
    layer = net.get_submodule(name)
    if not isinstance(layer, ADAPTABLE):
        raise ConfigError(f"'{name}' is a {type(layer).__name__}, not a Linear or Conv2d layer")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise ConfigError(f"'{name}' is a grouped conv (groups={layer.groups}); LoRA adapts groups=1 convs only")
    return layer


def attach(net: nn.Module, adapters: dict[str, LoraWeight]) -> dict[str, LoraWeight]:
    """Add ``adapters`` ({module name: LoraWeight}) to ``net``'s layers, sharing their parameters
    (training the adapters trains the adapted net)."""
    for name, adapter in adapters.items():
        layer = _layer(net, name)
        if tuple(layer.weight.shape) != adapter.shape:
            raise ConfigError(f"the LoRA adapter for '{name}' is for a weight of shape {list(adapter.shape)}, "
                              f"but the layer's is {list(layer.weight.shape)}")
        parametrize.register_parametrization(layer, "weight", adapter)
    return adapters


def inject(net: nn.Module, targets, *, rank: int, alpha: float | None = None) -> dict[str, LoraWeight]:
    """New adapters (B = 0: the net's function is unchanged) on the layers ``targets`` selects;
    ``alpha`` defaults to ``rank`` (scaling 1)."""
    adapters = {}
    for name in resolve_targets(net, targets):
        weight = _layer(net, name).weight
        adapters[name] = LoraWeight(weight.shape, rank=rank, alpha=rank if alpha is None else alpha,
                                    device=weight.device, dtype=weight.dtype)
    return attach(net, adapters)


def adapters_of(net: nn.Module) -> dict[str, list[LoraWeight]]:
    """{module name: its adapters, in the order they apply} of every adapted layer of ``net``."""
    return {name: [p for p in module.parametrizations.weight if isinstance(p, LoraWeight)]
            for name, module in net.named_modules() if parametrize.is_parametrized(module, "weight")}


def _stored(net: nn.Module, name: str) -> Tensor:
    return net.get_submodule(name).parametrizations.weight.original


@torch.no_grad()
def merge(net: nn.Module) -> None:
    """Fold every unmerged adapter's delta into its layer's stored weight."""
    for name, adapters in adapters_of(net).items():
        for adapter in adapters:
            if not adapter.merged:
                _stored(net, name).add_(adapter.delta())
                adapter.merged = True


@torch.no_grad()
def unmerge(net: nn.Module) -> None:
    """Take every merged adapter's delta out of its layer's stored weight again (exact up to float
    rounding: the stored weight comes back to within an ulp or so)."""
    for name, adapters in adapters_of(net).items():
        for adapter in adapters:
            if adapter.merged:
                _stored(net, name).sub_(adapter.delta())
                adapter.merged = False


def set_scale(net: nn.Module, multiplier: float) -> None:
    """Apply ``multiplier`` times each adapter (0: off, 1: as trained); merged ones stay merged."""
    for name, adapters in adapters_of(net).items():
        for adapter in adapters:
            was_merged = adapter.merged
            if was_merged:
                with torch.no_grad():
                    _stored(net, name).sub_(adapter.delta())
            adapter.multiplier = float(multiplier)
            if was_merged:
                with torch.no_grad():
                    _stored(net, name).add_(adapter.delta())


def bake(net: nn.Module) -> None:
    """Merge every adapter and remove them: plain layers with the adapted weights (for sampling)."""
    merge(net)
    for name in adapters_of(net):
        parametrize.remove_parametrizations(net.get_submodule(name), "weight", leave_parametrized=False)


@torch.no_grad()
def merge_weights(net: nn.Module, adapters: dict[str, LoraWeight], *, multiplier: float = 1.0) -> None:
    """Add ``multiplier`` times each adapter's delta to ``net``'s plain layers (no parametrization
    left behind): a loaded pipeline keeps its plain, fast layers."""
    for name, adapter in adapters.items():
        layer = _layer(net, name)
        if tuple(layer.weight.shape) != adapter.shape:
            raise ConfigError(f"the LoRA adapter for '{name}' is for a weight of shape {list(adapter.shape)}, "
                              f"but the layer's is {list(layer.weight.shape)}")
        delta = adapter.delta() * multiplier
        layer.weight.add_(delta.to(device=layer.weight.device, dtype=layer.weight.dtype))


def adapter_parameters(adapters: dict[str, LoraWeight]) -> list[nn.Parameter]:
    return [p for adapter in adapters.values() for p in adapter.parameters()]


__all__ = ["ALIASES", "LoraWeight", "adaptable_layers", "adapter_parameters", "adapters_of", "attach", "bake",
           "inject", "merge", "merge_weights", "parse_targets", "resolve_targets", "set_scale", "unmerge"]
