"""Conditioning is one dict, end to end (ARCHITECTURE.md).

A batch is ``{"x": images, "cond": {...}}`` (plus ``"noise"`` for reflow pairs). ``cond`` may
hold any key of ``COND_KEYS``:

    y       class labels, int64 [B]
    text    {"states": [B, L, D], "mask": [B, L] bool, "pooled": [B, D]}: a frozen text encoder's
            token states, which tokens are real, and the pooled sentence vector
    image   a control, low-resolution or input image [B, C, H, W]
    mask    [B, 1, H, W] in {0, 1}: 1 = regenerate, 0 = keep (inpainting)
    masked  [B, C, H, W]: the image with the region to regenerate zeroed
    guidance  float [B]: the classifier-free guidance scale w a guidance-distilled network takes as
            an input (``genmodels.distill``), embedded beside the noise level

Objectives, ``NetDenoiser``, guidance wrappers and samplers pass ``cond`` through without naming
keys; only networks (and the data that fill them) read them. A value is a tensor with the batch
first, or a dict of such tensors (one level deep, as ``text``); the helpers below treat both.

Classifier-free guidance needs "no condition" for each key: ``null_value(net, key, value)``, the
value the network was trained to read as unconditional (``COND_KEYS[key].null``; the network may
override it with its own ``null_cond(key, value)``, e.g. a learned null text embedding). Training
replaces each key by its null at a per-key rate (``drop``); sampling guides on any subset of keys
(``genmodels.diffusion.guidance.CFGDenoiser`` with ``uncond=nulled(net, keys)``).

A new key is one registry entry: ``COND_KEYS["brightness"] = CondKey("mean pixel value [B]",
null=lambda net, v: torch.zeros_like(v))``. With ``embed`` (``embed(emb_dim) -> module``, e.g.
``scalar_embedding(scale=..., default=...)``) the UNet and the MLP read it when built with
``embed_cond=[key]``: a vector added to their time embedding (``genmodels.nn.cond_embed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .errors import ConfigError

__all__ = ["COND_KEYS", "CondKey", "as_cond", "batch_size", "call_net", "cat", "check_keys", "check_reads", "drop",
           "embedders", "map_values", "null_value", "nulled", "scalar_embedding", "select", "where"]


@dataclass(frozen=True)
class CondKey:
    """A conditioning key: what its value holds, and its null value given the network and a value
    to take the shape from."""

    help: str
    null: Callable[[object, object], object]
    embed: Callable[[int], object] | None = None  # embed(emb_dim) -> module(value, batch, device) -> [B, emb_dim]


def _null_class(net, y: Tensor) -> Tensor:
    num_classes = getattr(net, "num_classes", None)
    if num_classes is None:
        raise ConfigError("classifier-free guidance on 'y' needs a class-conditional network (model.num_classes)")
    return torch.full_like(y, num_classes)  # the embedding's extra row


def _null_text(net, text: dict) -> dict:
    null = getattr(net, "null_text", None)
    if null is None:
        raise ConfigError("classifier-free guidance on 'text' needs a text-conditional network "
                          "(a run trained with text.captions)")
    return null(text)


def scalar_embedding(*, scale: float = 1.0, default: float = 0.0) -> Callable[[int], object]:
    """``embed`` for a per-sample scalar key: ``genmodels.nn.cond_embed.ScalarEmbedding`` (imported
    when a network is built: the networks import this module)."""
    def embed(emb_dim: int):
        from .nn.cond_embed import ScalarEmbedding

        return ScalarEmbedding(emb_dim, scale=scale, default=default)
    return embed


COND_KEYS: dict[str, CondKey] = {
    "y": CondKey("class labels, int64 [B]", _null_class),
    "text": CondKey("text encoder outputs {states [B, L, D], mask [B, L], pooled [B, D]}", _null_text),
    "image": CondKey("a control / low-resolution / input image [B, C, H, W]",
                     lambda net, v: torch.zeros_like(v)),
    "mask": CondKey("inpainting mask [B, 1, H, W], 1 = regenerate", lambda net, v: torch.ones_like(v)),
    "masked": CondKey("the image with the region to regenerate zeroed [B, C, H, W]",
                      lambda net, v: torch.zeros_like(v)),
    # w = 1 is the conditional model (guidance.py's convention), so it is also the null value
    "guidance": CondKey("classifier-free guidance scale w, float [B] (a guidance-distilled net)",
                        lambda net, v: torch.ones_like(v), embed=scalar_embedding(scale=10.0, default=1.0)),
}


def check_keys(keys, *, where: str) -> None:
    """Refuse keys that are not in COND_KEYS, naming ``where`` they were given."""
    unknown = sorted(set(keys) - set(COND_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown conditioning key(s) {unknown}; known: {', '.join(COND_KEYS)}")


def embedders(keys, *, where: str) -> dict:
    """{key: its ``embed`` factory} for a network's ``embed_cond`` keys, or one ConfigError naming
    ``where`` for a key that is unknown or has no vector embedding."""
    check_keys(keys, where=where)
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{where} lists a key twice: {list(keys)}")
    plain = [k for k in keys if COND_KEYS[k].embed is None]
    if plain:
        can = [k for k, v in COND_KEYS.items() if v.embed is not None]
        raise ConfigError(f"{where}: {plain} cannot be embedded as a vector; keys that can: {', '.join(can) or 'none'}")
    return {k: COND_KEYS[k].embed for k in keys}


def call_net(net, x, c_noise, cond):
    """``net(x, c_noise, cond)``, or ``net(x, c_noise)`` when there is no conditioning: a network
    that reads none need not take the argument."""
    return net(x, c_noise, cond) if cond else net(x, c_noise)


def check_reads(cond: dict | None, reads, *, who: str) -> dict:
    """``cond`` (None -> {}) after checking that network ``who`` reads every key in it: a value
    it would silently ignore (labels for an unconditional net) is a mistake upstream."""
    cond = as_cond(cond)
    unread = [k for k in cond if k not in reads]
    if unread:
        raise ValueError(f"{who} was given conditioning {unread} it does not read (it reads "
                         f"{sorted(reads) or 'none'}); build it for them or drop them")
    return cond


def as_cond(cond) -> dict:
    """``None`` -> {}; a dict is returned as is."""
    if cond is None:
        return {}
    if not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of conditioning values, got {type(cond).__name__}")
    return cond


def map_values(fn: Callable[[Tensor], Tensor], cond: dict | None) -> dict:
    """``fn`` applied to every tensor in ``cond`` (values, and the values of nested dicts)."""
    return {k: {kk: fn(vv) for kk, vv in v.items()} if isinstance(v, dict) else fn(v)
            for k, v in as_cond(cond).items()}


def _zip(fn, conds: list[dict]) -> dict:
    """``fn`` over the values of each key (and nested key) across dicts with the same keys."""
    def same_keys(dicts, where):
        if any(set(d) != set(dicts[0]) for d in dicts[1:]):
            raise ValueError(f"conditioning dicts disagree on the keys{where}: {[sorted(d) for d in dicts]}")

    same_keys(conds, "")
    out = {}
    for k in conds[0]:
        values = [c[k] for c in conds]
        if isinstance(values[0], dict):
            same_keys(values, f" of {k!r}")
            out[k] = {kk: fn([v[kk] for v in values]) for kk in values[0]}
        else:
            out[k] = fn(values)
    return out


def cat(conds: list[dict]) -> dict:
    """Concatenate conditioning dicts with the same keys along the batch."""
    return _zip(torch.cat, [as_cond(c) for c in conds])


def where(keep: Tensor, a: dict, b: dict) -> dict:
    """Per sample, ``a``'s value where ``keep`` [B] is True, else ``b``'s."""
    def pick(values):
        first, second = values
        return torch.where(keep.reshape(-1, *([1] * (first.ndim - 1))), first, second)
    return _zip(pick, [a, b])


def select(cond: dict | None, keys) -> dict:
    """The entries of ``cond`` whose key is in ``keys`` (what a network reads of the data)."""
    return {k: v for k, v in as_cond(cond).items() if k in keys}


def batch_size(cond: dict | None) -> int | None:
    """The batch size of the first value, or None for an empty dict."""
    for v in as_cond(cond).values():
        return len(next(iter(v.values()))) if isinstance(v, dict) else len(v)
    return None


def null_value(net, key: str, value):
    """The null ("no condition") value of ``key`` for network ``net``, shaped like ``value``:
    the network's own ``null_cond(key, value)`` when it has one for the key, else the registry's."""
    own = getattr(net, "null_cond", None)
    if own is not None:
        out = own(key, value)
        if out is not None:
            return out
    if key not in COND_KEYS:
        raise ConfigError(f"no null value for conditioning key {key!r}; register it in genmodels.cond.COND_KEYS")
    return COND_KEYS[key].null(net, value)


def nulled(net, keys) -> Callable[[dict], dict]:
    """``uncond(cond)``: ``cond`` with ``keys`` replaced by their null values (the other keys
    kept), the unconditional half of classifier-free guidance on those keys."""
    keys = tuple(keys)

    def uncond(cond: dict) -> dict:
        missing = [k for k in keys if k not in cond]
        if missing:
            raise ConfigError(f"guidance on {missing} needs those conditioning values; got keys {sorted(cond)}")
        return {**cond, **{k: null_value(net, k, cond[k]) for k in keys}}

    return uncond


def drop(cond: dict | None, rates: dict, null: Callable[[str, object], object], *, generator) -> dict:
    """Classifier-free guidance's training dropout (Ho & Salimans 2022, Algorithm 1) for any key:
    each sample's ``key`` is replaced by ``null(key, value)`` with probability ``rates[key]``.
    Keys are visited in ``rates``' order, one uniform draw per sample each."""
    cond = as_cond(cond)
    out = dict(cond)
    for key, rate in rates.items():
        if not rate or key not in cond:
            continue
        n = batch_size({key: cond[key]})
        value = cond[key]
        device = (next(iter(value.values())) if isinstance(value, dict) else value).device
        keep = torch.rand((n,), generator=generator, device=device) >= rate
        out[key] = where(keep, {key: value}, {key: null(key, value)})[key]
    return out
