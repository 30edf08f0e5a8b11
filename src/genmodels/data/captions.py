"""Captions for text-to-image: measured attributes, ordinal words, caption styles, held-out combinations.

Measurements
------------
Every measurer takes images x [N, 1, H, W] in [-1, 1] (a tensor or an array) and returns float64
arrays [N]. Ink is ``u = (x + 1) / 2`` in [0, 1]; ink at or below ``FLOOR`` = 0.1 counts as
background everywhere, so the faint noise of a generated image does not move a measurement.
Coordinates: column ``c`` to the right, ``r`` the row downwards, and ``y = -r`` upwards.

- ``stroke_thickness``: the mask ``u > 0.5`` is thinned to a one-pixel skeleton (Zhang & Suen 1984,
  "A fast parallel algorithm for thinning digital patterns", CACM 27(3)) of ``s`` pixels with ``e``
  free ends (a pixel with one skeleton neighbour; an isolated one counts twice). The thinning stops
  about half a stroke width t short of each free end, so a stroke of ink mass ``A = sum u [u > FLOOR]``
  satisfies ``A = t (s + e t / 2)``; solved for t: ``t = (sqrt(s^2 + 2 e A) - s) / e``, or ``A / s``
  for closed loops (e = 0). Without the end term a 5 x 22 px bar measures 6.5 px; with it, 5.0.
  Length is a pixel count, so a diagonal stroke reads up to sqrt(2) wider than it is across (its
  horizontal width). The thinning is vectorised over the batch: 10,000 digits take about a second.
- ``slant``: the shear ``mu11 / mu02`` of the ink distribution's second central moments,
  ``mu11 = sum u (c - c_bar)(y - y_bar)``, ``mu02 = sum u (y - y_bar)^2``. With y up, positive means
  the top of the glyph leans right: a bar drawn as ``c = c0 + k y`` measures k, the tangent of its
  lean from vertical.
- ``bounding_box``: rows and columns (inclusive) of ``u > threshold``; ``size``: its area over the
  image's; ``width``: its width over the image's; ``position``: its centre (cx, cy) in [0, 1], y down.
- ``brightness``: mean ink over the object's pixels (``u > FLOOR``); ``fill``: the fraction of the
  ``u > FLOOR`` bounding box covered by such pixels. (``u > 0.5`` pixels would make fill another
  brightness: their fill and brightness have Spearman 0.82 on Fashion train, these 0.26.)

A blank image (no ink above the thresholds) measures thickness 0, slant 0, size, width and
fill 0, brightness 0 and position (0.5, 0.5); ``bounding_box`` gives NaN for it. So generated
samples never crash the evaluator, and a blank one ranks as thin, small and dark.

Attributes and words
--------------------
``measure(x, kind)`` returns the attributes of ``kind``'s captions, ``attribute_codes`` bins them
with the fixed ``THRESHOLDS`` into ordinal codes 0, 1, ... that index ``WORDS[kind][attribute]``:

- mnist: thickness (thin, medium, thick), slant (leaning left, upright, leaning right), width
  (narrow, normal-width, wide). MNIST fits every digit into a 20 x 20 px box, so 85 % of train is
  exactly 20 px high and width, not height, is the size that varies; digits are centred by centre
  of mass (98 % of bounding-box centres within 3 px of the middle), so position is measured but not
  worded.
- fashion: brightness (dark, grey, bright), fill (sparse, solid), size (small, medium, large:
  the bounding box's area). Fashion-MNIST items are centred to within a pixel (99.8 %).

``descriptive`` captions measure a set at 28 x 28 (resized if loaded at another size; channel 0).

Styles
------
``CAPTION_STYLES``: ``descriptive`` (class and attribute words, several templates per item, mnist
and fashion), ``terse`` (the class only: "7", "trouser"; emoji: the CLDR name) and ``names`` (the
dataset's own captions, "name; alias; alias" split into phrasings). ``TEMPLATES[style][kind]`` has a
``train`` pool and a ``heldout`` pool of phrasings never used in training, to test whether a model
generalises to new wordings. In a template ``[...]`` is a part dropped when the attribute it names is
not stated.

Held-out combinations
---------------------
``HELDOUT_COMBINATIONS[kind]`` lists (class, attribute words) combinations a model should never read
together in training. ``caption_set(..., holdout=True)`` (the default) leaves the combination's
attributes out of the captions of every item that has it; the class and the other attributes stay.
The masking goes by content, not by split, so a model trained on split "all" does not see them
either. ``heldout_prompts(kind)`` asks for exactly those combinations, to test compositional
generalisation; ``prompt_set`` never masks.

    from genmodels.data import load_dataset
    from genmodels.data.captions import attribute_codes, caption_set, heldout_prompts, prompt_set
    train = caption_set(load_dataset("mnist", split="train"), "descriptive")
    train.texts[0]    # ('a thin 2, upright, narrow', 'handwritten two, thin stroke, upright, narrow', ...)
    train.requested   # {'thickness': array([0, 0, 2, ...]), 'slant': ..., 'width': ...}
    prompts = prompt_set(load_dataset("mnist", split="test"), "descriptive")  # held-out phrasings
    samples = model_sample(prompts.texts)                  # [N, 1, 28, 28] in [-1, 1]
    codes = attribute_codes(samples, "mnist")              # compare with prompts.requested
    unseen = heldout_prompts("mnist", repeats=10)          # 3 combinations x 3 templates x 10
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genmodels.errors import ConfigError

__all__ = [
    "FLOOR", "BoundingBox", "zhang_suen", "stroke_thickness", "slant", "bounding_box", "size", "width",
    "position", "brightness", "fill", "MEASURES", "WORDS", "THRESHOLDS", "KINDS", "measure", "codes_of",
    "attribute_codes", "HELDOUT_COMBINATIONS", "heldout_mask", "NUMBER_WORDS", "FASHION_NOUNS", "PHRASINGS",
    "TEMPLATES", "render", "Captions", "Prompts", "supported_styles", "CAPTION_STYLES", "caption_set",
    "prompt_set", "cycle", "heldout_prompts",
]  # fmt: skip

FLOOR = 0.1  # ink at or below this is background
_MASK = 0.5  # strokes and glyph boxes: the binarisation threshold
_CHUNK = 4096  # images measured at a time: float64 work arrays of 60,000 images would take GBs


def _ink(x) -> np.ndarray:
    """Images [n, 1, H, W] in [-1, 1] -> ink [n, H, W] in [0, 1] (float32, clipped)."""
    array = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    return np.clip((array[:, 0].astype(np.float32) + 1) / 2, 0, 1)


def _check(x) -> None:
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    if len(shape) != 4 or shape[1] != 1:
        raise ValueError(f"measurers expect grayscale images [N, 1, H, W] in [-1, 1], got shape {shape}; "
                         "pass x[:, :1] for a set whose channel is repeated")


def _per_chunk(fn, x, **options):
    """``fn`` (ink [n, H, W] -> array [n] or a tuple of them) over ``_CHUNK`` images at a time."""
    _check(x)
    parts = [fn(_ink(x[i:i + _CHUNK]), **options) for i in range(0, max(len(x), 1), _CHUNK)]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(p) for p in zip(*parts))
    return np.concatenate(parts)


def _neighbours(p: np.ndarray) -> tuple[np.ndarray, ...]:
    """P2..P9 of Zhang & Suen (north, then clockwise) of every inner pixel of padded p [N, H+2, W+2]."""
    return (p[:, :-2, 1:-1], p[:, :-2, 2:], p[:, 1:-1, 2:], p[:, 2:, 2:],
            p[:, 2:, 1:-1], p[:, 2:, :-2], p[:, 1:-1, :-2], p[:, :-2, :-2])  # fmt: skip


def _zhang_suen_table(first: bool) -> np.ndarray:
    """bool [256]: delete a pixel whose neighbours P2..P9 are the bits 0..7 of the index? Yes when
    it has 2..6 of them, exactly one 0 -> 1 step around them, and (first sub-iteration) P2 P4 P6 =
    P4 P6 P8 = 0, (second) P2 P4 P8 = P2 P6 P8 = 0."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    b = bits.sum(1)
    a = ((bits == 0) & (np.roll(bits, -1, axis=1) == 1)).sum(1)
    p2, p4, p6, p8 = bits[:, 0], bits[:, 2], bits[:, 4], bits[:, 6]
    side = (p2 & p4 & p6) | (p4 & p6 & p8) if first else (p2 & p4 & p8) | (p2 & p6 & p8)
    return (b >= 2) & (b <= 6) & (a == 1) & (side == 0)


_ZHANG_SUEN_TABLES = (_zhang_suen_table(True), _zhang_suen_table(False))


def zhang_suen(mask: np.ndarray) -> np.ndarray:
    """Thin boolean masks [N, H, W] to one-pixel skeletons (Zhang & Suen 1984), all at once.

    Each pass deletes, in two sub-iterations, the border pixels with 2..6 neighbours and exactly
    one 0 -> 1 step around them, first those facing south-east, then north-west; an image is done
    after a pass that deletes nothing. Like the original it erases a lone 2 x 2 block entirely.
    """
    p = np.pad(np.asarray(mask, dtype=np.uint8), ((0, 0), (1, 1), (1, 1)))
    active = np.arange(len(p))
    while active.size:
        changed = np.zeros(len(p), bool)
        for table in _ZHANG_SUEN_TABLES:
            q = p[active]
            code = sum(n << k for k, n in enumerate(_neighbours(q)))  # uint8: P2..P9 as bits 0..7
            delete = (q[:, 1:-1, 1:-1] == 1) & table[code]
            q[:, 1:-1, 1:-1][delete] = 0
            p[active] = q
            changed[active] |= delete.any((1, 2))
        active = np.flatnonzero(changed)
    return p[:, 1:-1, 1:-1].astype(bool)


def _thickness(u: np.ndarray) -> np.ndarray:
    mask = u > _MASK
    skeleton = zhang_suen(mask)
    degree = sum(_neighbours(np.pad(skeleton, ((0, 0), (1, 1), (1, 1))).view(np.uint8)))
    s = skeleton.sum((1, 2)).astype(np.float64)
    e = (skeleton & (degree == 1)).sum((1, 2)) + 2.0 * (skeleton & (degree == 0)).sum((1, 2))
    # ink the thinning erased entirely (a 2 x 2 blob) is taken as one dot
    vanished = mask.any((1, 2)) & (s == 0)
    s, e = np.where(vanished, 1.0, s), np.where(vanished, 2.0, e)
    mass = (u * (u > FLOOR)).sum((1, 2), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(e > 0, (np.sqrt(s**2 + 2 * e * mass) - s) / e, mass / s)
    return np.where(s > 0, t, 0.0)


def stroke_thickness(x) -> np.ndarray:
    """Mean stroke width in pixels: ink mass over Zhang-Suen skeleton length, with half a width
    added per free end, ``t = (sqrt(s^2 + 2 e A) - s) / e`` (see the module docstring); 0 when blank."""
    return _per_chunk(_thickness, x)


def _slant(u: np.ndarray) -> np.ndarray:
    w = np.where(u > FLOOR, u, 0).astype(np.float64)
    mass = w.sum((1, 2))
    c = np.arange(u.shape[2], dtype=np.float64)
    y = -np.arange(u.shape[1], dtype=np.float64)  # y up: a positive shear leans the top right
    wc, wy = w.sum(1), w.sum(2)  # marginals [n, W], [n, H]
    with np.errstate(divide="ignore", invalid="ignore"):
        dc = c - (wc @ c / mass)[:, None]
        dy = y - (wy @ y / mass)[:, None]
        mu11 = np.einsum("nr,nrc,nc->n", dy, w, dc)
        mu02 = (wy * dy**2).sum(1)
        shear = mu11 / mu02
    return np.where((mass > 0) & (mu02 > 1e-9 * np.maximum(mass, 1)), shear, 0.0)


def slant(x) -> np.ndarray:
    """Shear ``mu11 / mu02`` of the ink (x right, y up): > 0 when the top of the glyph leans right,
    ``c = c0 + k y`` measures k; 0 for a blank image or a single row of ink."""
    return _per_chunk(_slant, x)


@dataclass(frozen=True, eq=False)  # eq=False: arrays
class BoundingBox:
    """Per image the inclusive pixel rows ``top``..``bottom`` and columns ``left``..``right``
    (float [N], NaN for a blank image) and the images' (H, W)."""

    top: np.ndarray
    left: np.ndarray
    bottom: np.ndarray
    right: np.ndarray
    shape: tuple[int, int]

    @property
    def height(self) -> np.ndarray:
        """Box height over the image height; 0 when blank."""
        return np.nan_to_num((self.bottom - self.top + 1) / self.shape[0])

    @property
    def width(self) -> np.ndarray:
        """Box width over the image width; 0 when blank."""
        return np.nan_to_num((self.right - self.left + 1) / self.shape[1])

    @property
    def centre(self) -> tuple[np.ndarray, np.ndarray]:
        """(cx, cy) in [0, 1], y downwards; (0.5, 0.5) when blank."""
        cx = (self.left + self.right + 1) / 2 / self.shape[1]
        cy = (self.top + self.bottom + 1) / 2 / self.shape[0]
        return np.nan_to_num(cx, nan=0.5), np.nan_to_num(cy, nan=0.5)


def _box(u: np.ndarray, *, threshold: float) -> tuple[np.ndarray, ...]:
    mask = u > threshold
    rows, cols = mask.any(2), mask.any(1)
    h, w = u.shape[1:]
    top, left = rows.argmax(1), cols.argmax(1)
    bottom, right = h - 1 - rows[:, ::-1].argmax(1), w - 1 - cols[:, ::-1].argmax(1)
    blank = ~rows.any(1)
    return tuple(np.where(blank, np.nan, v.astype(np.float64)) for v in (top, left, bottom, right))


def bounding_box(x, *, threshold: float = _MASK) -> BoundingBox:
    """Bounding box of the pixels with ink above ``threshold`` (0.5: the strokes)."""
    return BoundingBox(*_per_chunk(_box, x, threshold=threshold), shape=tuple(x.shape[-2:]))


def size(x, *, threshold: float = _MASK) -> np.ndarray:
    """Bounding-box area over the image area, in [0, 1]; 0 when blank."""
    box = bounding_box(x, threshold=threshold)
    return box.height * box.width


def width(x, *, threshold: float = _MASK) -> np.ndarray:
    """Bounding-box width over the image width, in [0, 1]; 0 when blank."""
    return bounding_box(x, threshold=threshold).width


def position(x, *, threshold: float = _MASK) -> tuple[np.ndarray, np.ndarray]:
    """Bounding-box centre (cx, cy) in [0, 1], cy downwards; (0.5, 0.5) when blank."""
    return bounding_box(x, threshold=threshold).centre


def _brightness(u: np.ndarray) -> np.ndarray:
    on = u > FLOOR
    return np.where(on, u, 0).sum((1, 2), dtype=np.float64) / np.maximum(on.sum((1, 2)), 1)


def brightness(x) -> np.ndarray:
    """Mean ink over the object's pixels (ink > FLOOR), in [0, 1]; 0 when blank."""
    return _per_chunk(_brightness, x)


def _fill(u: np.ndarray) -> np.ndarray:
    on = u > FLOOR
    rows, cols = on.any(2), on.any(1)  # the box of the `on` pixels holds them all: count, not mask
    height = rows.shape[1] - rows[:, ::-1].argmax(1) - rows.argmax(1)
    wide = cols.shape[1] - cols[:, ::-1].argmax(1) - cols.argmax(1)
    return np.where(rows.any(1), on.sum((1, 2)) / np.maximum(height * wide, 1), 0.0)


def fill(x) -> np.ndarray:
    """Fraction of the object's bounding box (ink > FLOOR) covered by object pixels; 0 when blank."""
    return _per_chunk(_fill, x)


# ---------------------------------------------------------------- attributes and their words

# kind -> attribute -> measurer of images [N, 1, 28, 28]. Fashion boxes use FLOOR, not 0.5: a dark
# item's dim parts (a sandal's straps) are part of the object.
MEASURES = {
    "mnist": {"thickness": stroke_thickness, "slant": slant, "width": width},
    "fashion": {"brightness": brightness, "fill": fill, "size": functools.partial(size, threshold=FLOOR)},
}
WORDS = {
    "mnist": {
        "thickness": ("thin", "medium", "thick"),
        "slant": ("leaning left", "upright", "leaning right"),
        "width": ("narrow", "normal-width", "wide"),
    },
    "fashion": {
        "brightness": ("dark", "grey", "bright"),
        "fill": ("sparse", "solid"),
        "size": ("small", "medium", "large"),
    },
}
# Code k = the number of cuts at or below the value (np.digitize). Terciles (the median for fill)
# of `measure(load_dataset(kind, split="train").x, kind)`, fixed here so captions never move with
# a split: mnist thickness 2.238 / 2.710 px, slant 0.009 / 0.261, width 14 / 17 px; fashion
# brightness 0.563 / 0.719, fill median 0.719, size 0.571 / 0.750. Rounded: slant's lower cut to 0,
# so "leaning left" is any leftward shear (bins 32 / 35 / 33 %); width and size between whole
# pixels (px, px^2), so no item sits on a cut (width 32 / 36 / 32 %, size 32 / 30 / 37 %: 8 % of
# Fashion boxes are exactly 28 x 21 px). tests/test_captions.py checks the bins stay balanced.
THRESHOLDS = {
    "mnist": {"thickness": (2.24, 2.71), "slant": (0.0, 0.26), "width": (13.5 / 28, 17.5 / 28)},
    "fashion": {"brightness": (0.56, 0.72), "fill": (0.72,), "size": (447.5 / 784, 587.5 / 784)},
}
KINDS = tuple(MEASURES)


def _check_kind(kind: str) -> None:
    if kind not in MEASURES:
        raise ConfigError(f"no attributes are measured for {kind!r}; choose one of {', '.join(KINDS)}")


def measure(x, kind: str) -> dict[str, np.ndarray]:
    """The attributes ``kind`` ("mnist" or "fashion") captions state, measured on images
    [N, 1, H, W] in [-1, 1] (thickness in pixels: pass 28 x 28 images)."""
    _check_kind(kind)
    return {name: fn(x) for name, fn in MEASURES[kind].items()}


def codes_of(measurements: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """Measurements -> ordinal codes int64 [N] indexing ``WORDS[kind][attribute]``."""
    _check_kind(kind)
    return {name: np.digitize(measurements[name], THRESHOLDS[kind][name]).astype(np.int64)
            for name in MEASURES[kind]}


def attribute_codes(x, kind: str) -> dict[str, np.ndarray]:
    """``codes_of(measure(x, kind), kind)``: what to compare with a prompt's ``requested``."""
    return codes_of(measure(x, kind), kind)


# ---------------------------------------------------------------- held-out combinations

# Counts in train with the thresholds above (mnist has 450 train items per class, fashion 6,000):
# mnist 3 thick leaning left 46, 1 thin leaning right 51, 7 thick upright 54; fashion Trouser
# dark solid 1,013, Bag bright sparse 1,025, Dress bright sparse 631. Each class keeps its other
# combinations, so every word is still seen with the class (thick 3s upright, thin 3s leaning left).
HELDOUT_COMBINATIONS = {
    "mnist": (
        {"label": 3, "thickness": "thick", "slant": "leaning left"},
        {"label": 1, "thickness": "thin", "slant": "leaning right"},
        {"label": 7, "thickness": "thick", "slant": "upright"},
    ),
    "fashion": (
        {"label": 1, "brightness": "dark", "fill": "solid"},  # Trouser
        {"label": 8, "brightness": "bright", "fill": "sparse"},  # Bag
        {"label": 3, "brightness": "bright", "fill": "sparse"},  # Dress
    ),
}


def _combination_codes(kind: str, combination: dict) -> dict[str, int]:
    return {name: WORDS[kind][name].index(word) for name, word in combination.items() if name != "label"}


def heldout_mask(labels: np.ndarray, codes: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """Per attribute, bool [N]: the items whose captions must leave it out, because the item has
    one of ``HELDOUT_COMBINATIONS[kind]`` that names it."""
    hide = {name: np.zeros(len(labels), bool) for name in codes}
    for combination in HELDOUT_COMBINATIONS.get(kind, ()):
        wanted = _combination_codes(kind, combination)
        match = labels == combination["label"]
        for name, code in wanted.items():
            match &= codes[name] == code
        for name in wanted:
            hide[name] |= match
    return hide


# ---------------------------------------------------------------- templates and styles

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_NOUNS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle boot")  # FASHION_CLASSES as nouns for a sentence
PHRASINGS = ("train", "heldout")
# style -> template set -> pool -> templates. A "[...]" part is dropped when an attribute it names
# is not stated (a held-out combination's); the text outside brackets names the class only.
TEMPLATES = {
    "descriptive": {
        "mnist": {
            "train": (
                "a[ {thickness}] {digit}[, {slant}][, {width}]",
                "handwritten {word}[, {thickness} stroke][, {slant}][, {width}]",
                "the digit {digit}[, written with a {thickness} stroke][, {slant}][, {width}]",
                "a[ {width}] {word}[ in {thickness} strokes][, {slant}]",
            ),
            "heldout": (
                "number {digit}[: {thickness} lines][, {slant}][, {width}]",
                "a picture of a[ {width}] {word}[, {slant}][, drawn with a {thickness} pen]",
                "{word} ({digit})[, {slant}][, {thickness}-stroked][, {width}]",
            ),
        },
        "fashion": {
            "train": (
                "a[ {brightness}][ {fill}] {noun}[, {size}]",
                "a[ {brightness}] {noun}[, {fill} fill][, {size}]",
                "a[ {size}] {noun}[ in {brightness} tones][, {fill}]",
            ),
            "heldout": (
                "{noun}[: {brightness}][, {fill}][, {size}]",
                "a photo of a[ {fill}][ {brightness}] {noun}[, {size} size]",
            ),
        },
    },
    # terse: the class alone; its held-out pool is the smallest rewording
    "terse": {
        "mnist": {"train": ("{digit}",), "heldout": ("{word}",)},
        "fashion": {"train": ("{noun}",), "heldout": ("a {noun}",)},
        "captioned": {"train": ("{name}",), "heldout": ("{name} emoji",)},
        "classes": {"train": ("{noun}",), "heldout": ("a {noun}",)},
    },
    # names: every phrasing of the dataset's caption, bare in training
    "names": {
        "captioned": {"train": ("{phrasing}",), "heldout": ("an emoji of {phrasing}", "{phrasing}, as an emoji")},
    },
}
_PART = re.compile(r"\[([^\]]*)\]")
_ARTICLE = re.compile(r"\ba (?=[aeiu8]|o(?!ne\b))")  # "an 8", "an ankle boot", but "a one"


def render(template: str, fields: dict[str, str]) -> str:
    """Fill ``template``, dropping each ``[...]`` part that names a field missing from ``fields``."""
    def part(match):
        names = {name for _, name, _, _ in string.Formatter().parse(match[1]) if name}
        return match[1] if names <= fields.keys() else ""
    return _ARTICLE.sub("an ", _PART.sub(part, template).format(**fields))


@dataclass(frozen=True, eq=False)  # eq=False: tensors and arrays
class Captions:
    """Per item all its phrasings from one pool (at least one each); ``labels``: the dataset's y
    (or None); ``requested``: attribute -> int64 [N] codes the captions state (-1: not stated;
    empty for terse and names)."""

    texts: tuple[tuple[str, ...], ...]
    labels: Tensor | None
    requested: dict[str, np.ndarray]
    style: str
    phrasing: str

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True, eq=False)
class Prompts:
    """One prompt per item, with the class (``labels``) and attribute codes (``requested``, -1:
    not asked) an image generated from it should show."""

    texts: tuple[str, ...]
    labels: Tensor | None
    requested: dict[str, np.ndarray]
    style: str

    def __len__(self) -> int:
        return len(self.texts)


def _base(dataset) -> str:
    return dataset.name.removeprefix("edges:")  # edge-map pairs keep their source images as x


def supported_styles(dataset) -> tuple[str, ...]:
    """The caption styles ``dataset`` can have: descriptive for mnist and fashion (their
    attributes are measured), terse for any labelled or captioned set, names where it has captions."""
    styles = ("descriptive",) if _base(dataset) in KINDS else ()
    styles += ("terse",) if dataset.y is not None or dataset.captions else ()
    return styles + (("names",) if dataset.captions else ())


def _class_fields(base: str, *, class_names=(), captions=()) -> list[dict[str, str]]:
    """Per label (per item, for captioned sets) the fields that name the class."""
    if captions:
        return [{"name": c.split("; ")[0]} for c in captions]
    if base in ("mnist", "digits"):
        return [{"digit": str(k), "word": NUMBER_WORDS[k]} for k in range(10)]
    if base == "fashion":
        return [{"noun": noun} for noun in FASHION_NOUNS]
    return [{"noun": name.lower()} for name in class_names]


def _fields_of(dataset) -> list[dict[str, str]]:
    return _class_fields(_base(dataset), class_names=dataset.class_names, captions=dataset.captions)


def _mnist_like(dataset) -> Tensor:
    """The grayscale 28 x 28 images attributes are measured (and thresholded) on."""
    x = dataset.x[:, :1]
    if x.shape[-2:] != (28, 28):
        x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)
    return x


def _descriptive(dataset, *, phrasing: str, holdout: bool):
    kind = _base(dataset)
    labels = dataset.y.numpy()
    codes = attribute_codes(_mnist_like(dataset), kind)
    if holdout:
        hide = heldout_mask(labels, codes, kind)
        codes = {name: np.where(hide[name], -1, code) for name, code in codes.items()}
    names = list(codes)
    keys, inverse = np.unique(np.stack([labels, *codes.values()], 1), axis=0, return_inverse=True)
    classes, templates = _fields_of(dataset), TEMPLATES["descriptive"][kind][phrasing]
    table = []  # one tuple of phrasings per distinct (label, codes): a few hundred, not N
    for label, *row in keys.tolist():
        fields = {**classes[label], **{n: WORDS[kind][n][c] for n, c in zip(names, row) if c >= 0}}
        table.append(tuple(render(t, fields) for t in templates))
    return tuple(table[j] for j in inverse.reshape(-1)), codes


def _terse(dataset, *, phrasing: str, holdout: bool):
    group = "captioned" if dataset.captions else _base(dataset) if _base(dataset) in KINDS else "classes"
    group = "mnist" if _base(dataset) == "digits" else group
    templates, classes = TEMPLATES["terse"][group][phrasing], _fields_of(dataset)
    keys = range(len(dataset)) if dataset.captions else dataset.y.tolist()
    return tuple(tuple(render(t, classes[k]) for t in templates) for k in keys), {}


def _names(dataset, *, phrasing: str, holdout: bool):
    templates = TEMPLATES["names"]["captioned"][phrasing]

    def phrasings(caption: str) -> tuple[str, ...]:
        parts = dict.fromkeys(p.strip() for p in caption.split(";") if p.strip()) or {caption: None}
        return tuple(render(t, {"phrasing": p}) for p in parts for t in templates)
    return tuple(phrasings(c) for c in dataset.captions), {}


# style -> (dataset, *, phrasing, holdout) -> (texts per item, requested codes)
CAPTION_STYLES = {"descriptive": _descriptive, "terse": _terse, "names": _names}


def caption_set(dataset, style: str, *, phrasing: str = "train", holdout: bool = True) -> Captions:
    """Every item's captions in ``style`` from the ``phrasing`` pool ("train" or "heldout");
    deterministic. ``holdout`` leaves ``HELDOUT_COMBINATIONS`` unstated (see the module docstring)."""
    if style not in CAPTION_STYLES:
        raise ConfigError(f"unknown caption style {style!r}; choose one of {', '.join(CAPTION_STYLES)}")
    if phrasing not in PHRASINGS:
        raise ConfigError(f"unknown phrasing {phrasing!r}; choose one of {', '.join(PHRASINGS)}")
    supported = supported_styles(dataset)
    if style not in supported:
        offer = f"it supports {', '.join(supported)}" if supported else "it has neither labels nor captions"
        raise ConfigError(f"dataset {dataset.name} cannot have {style} captions; {offer}")
    texts, requested = CAPTION_STYLES[style](dataset, phrasing=phrasing, holdout=holdout)
    return Captions(texts, dataset.y, requested, style, phrasing)


def prompt_set(dataset, style: str, *, phrasing: str = "heldout", seed: int = 0) -> Prompts:
    """One prompt per item, drawn by ``seed`` among its (never masked) phrasings: what an
    evaluator asks a text-to-image model for, to check image i against ``labels[i]`` and
    ``requested`` (e.g. Spearman with ``measure``)."""
    captions = caption_set(dataset, style, phrasing=phrasing, holdout=False)
    counts = np.array([len(t) for t in captions.texts])
    pick = np.random.default_rng(seed).integers(0, counts) if len(counts) else counts
    texts = tuple(t[k] for t, k in zip(captions.texts, pick.tolist()))
    return Prompts(texts, captions.labels, captions.requested, style)


def cycle(prompts: Prompts, n: int) -> Prompts:
    """``n`` prompts: ``prompts`` repeated in order (prompt i is item i mod N): what the evaluation
    protocol draws sample i with."""
    index = np.arange(n) % len(prompts)
    labels = None if prompts.labels is None else torch.as_tensor(prompts.labels)[torch.from_numpy(index)]
    return Prompts(tuple(prompts.texts[i] for i in index), labels,
                   {k: np.asarray(v)[index] for k, v in prompts.requested.items()}, prompts.style)


def heldout_prompts(dataset_name: str, *, phrasing: str = "heldout", repeats: int = 1) -> Prompts:
    """Prompts for exactly the ``HELDOUT_COMBINATIONS`` of ``dataset_name`` (mnist, fashion): each
    combination in every template of the ``phrasing`` pool, ``repeats`` times over; attributes
    outside the combination are not asked (-1 in ``requested``)."""
    kind = dataset_name.removeprefix("edges:")
    if kind not in HELDOUT_COMBINATIONS:
        raise ConfigError(f"no held-out combinations for {dataset_name!r}; choose one of "
                          f"{', '.join(HELDOUT_COMBINATIONS)}")
    if phrasing not in PHRASINGS or repeats < 1:
        raise ConfigError(f"heldout_prompts needs phrasing in {', '.join(PHRASINGS)} and repeats >= 1, "
                          f"got {phrasing!r} and {repeats}")
    classes = _class_fields(kind)
    texts, labels, requested = [], [], {name: [] for name in MEASURES[kind]}
    for combination in HELDOUT_COMBINATIONS[kind]:
        wanted = _combination_codes(kind, combination)
        fields = {**classes[combination["label"]], **{n: WORDS[kind][n][c] for n, c in wanted.items()}}
        for template in TEMPLATES["descriptive"][kind][phrasing]:
            texts.append(render(template, fields))
            labels.append(combination["label"])
            for name, column in requested.items():
                column.append(wanted.get(name, -1))
    return Prompts(tuple(texts) * repeats, torch.tensor(labels * repeats, dtype=torch.int64),
                   {n: np.tile(np.array(v, np.int64), repeats) for n, v in requested.items()}, "descriptive")
