"""The built-in ``emoji`` dataset: Noto Color Emoji drawn at 64 px RGB, labelled by Unicode group,
captioned with their CLDR names.

Items are the ``fully-qualified`` lines of Unicode's emoji-test.txt (Debian ``unicode-data``)
outside the group ``Component`` (skin-tone swatches, hair parts) that the font (Debian
``fonts-noto-color-emoji``) draws as one glyph: a ZWJ sequence the font lacks comes out as
several glyphs side by side and is left out, as is one that draws nothing. Each is drawn by
Pillow from the font's only bitmap strike (109 ppem, 136 x 128 px glyphs) into a 136 x 136
transparent square, composited on white and resized with LANCZOS to 32, 48 or 64 px.

- ``y``: the Unicode group, one of ``GROUPS`` (9 classes).
- ``captions``: the CLDR short name as emoji-test.txt spells it ("waving hand: medium skin tone",
  "flag: Japan"), then the PyPI ``emoji`` package's aliases, joined by "; " ("grinning face;
  grinning"). The package's own name is the same words with the punctuation and the "flag:"
  stripped (":waving_hand_medium_skin_tone:", ":Japan:"), so it is added only when its words differ.
- split: 10 % of each group is held out, whole emoji at a time: every skin-tone variant of a base
  emoji (the sequence without U+1F3FB..U+1F3FF and U+FE0F) lies on the same side. The choice is
  made over emoji-test.txt's entries by a fixed seed, so it moves neither with the training seed
  nor with the font. Both parts come in a fixed shuffled order; "all" is train then test.

Drawing takes a few seconds, so the images are cached once per size in
``cache_dir() / "datasets" / "emoji-v1-{size}.npz"`` together with a fingerprint of the sources
(font size and mtime, emoji-test.txt's SHA-256, the emoji package's and Pillow's versions); a
cache whose fingerprint differs is drawn again.

    data = load_dataset("emoji", split="train")     # x [3290, 3, 64, 64], data.captions[i]
    items = emoji_items("test")                     # the characters, names, groups, captions
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genmodels.errors import DataError
from genmodels.paths import cache_dir

__all__ = ["GROUPS", "IMAGE_SIZES", "FONT_PATH", "EMOJI_TEST_PATH", "EmojiItems", "emoji_items", "load_emoji",
           "parse_emoji_test", "render_emoji", "emoji_cache_path"]

FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST_PATH = Path("/usr/share/unicode/emoji/emoji-test.txt")
GROUPS = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
          "Activities", "Objects", "Symbols", "Flags")  # emoji-test.txt's order, without Component
IMAGE_SIZES = (32, 48, 64)
DEFAULT_SIZE = 64
CACHE_VERSION = 1  # bump when the drawing or the cached fields change
_FONT_SIZE = 109  # the font's only bitmap strike (CBDT): Pillow refuses other sizes
_CANVAS = 136  # a glyph is 136 x 128 px: drawn 4 px down into a square, so resizing keeps its aspect
_TOP = (_CANVAS - 128) // 2
_REFERENCE = "\U0001F600"  # one glyph's advance: every glyph of the font has the same width
_SKIN_TONES = frozenset(map(chr, range(0x1F3FB, 0x1F400)))
_SPLIT_SEED = 20240601  # datasets.py's: the held-out set never moves with the training seed
_TEST_FRACTION = 0.1
_INSTALL_FONT = "apt-get install -y fonts-noto-color-emoji"
_INSTALL_TEST = "apt-get install -y unicode-data"


@dataclass(frozen=True)
class EmojiItems:
    """The items of one split, in the dataset's order: ``sequences`` are the emoji themselves."""

    sequences: tuple[str, ...]
    names: tuple[str, ...]
    groups: tuple[str, ...]
    captions: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.sequences)


def emoji_items(split: str = "train") -> EmojiItems:
    """The emoji of ``split`` (train, test, all) without their pixels (drawn and cached at 64 px
    on first use, since the one-glyph check needs the drawing)."""
    arrays = _cached(DEFAULT_SIZE)
    rows = _split_rows(arrays, split)
    labels = arrays["labels"][rows]
    return EmojiItems(tuple(arrays["sequences"][rows].tolist()), tuple(arrays["names"][rows].tolist()),
                      tuple(GROUPS[i] for i in labels), tuple(arrays["captions"][rows].tolist()))


def load_emoji(split: str, *, image_size: int | None = None) -> tuple[Tensor, Tensor, tuple[str, ...], tuple[str, ...]]:
    """Images float32 [N, 3, S, S] in [-1, 1], group labels int64 [N], class names and captions."""
    size = DEFAULT_SIZE if image_size is None else image_size
    if size not in IMAGE_SIZES:
        raise DataError(f"the emoji dataset is drawn at {', '.join(map(str, IMAGE_SIZES))} px, not "
                        f"image_size={image_size}; pick one of those")
    arrays = _cached(size)
    rows = _split_rows(arrays, split)
    x = torch.from_numpy(arrays["images"][rows].astype(np.float32)).div_(127.5).sub_(1.0)
    return x, torch.from_numpy(arrays["labels"][rows]), GROUPS, tuple(arrays["captions"][rows].tolist())


def emoji_cache_path(image_size: int) -> Path:
    return cache_dir() / "datasets" / f"emoji-v{CACHE_VERSION}-{image_size}.npz"


# ---- sources ------------------------------------------------------------------------------
def parse_emoji_test(path: Path | None = None) -> list[tuple[str, str, str]]:
    """(sequence, group, name) of every fully-qualified entry outside the Component group, in
    the file's (CLDR) order. A line reads ``1F600 ; fully-qualified # 😀 E1.0 grinning face``."""
    path, entries, group = path or EMOJI_TEST_PATH, [], None
    for line in _read_text(path).splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        code, sep, rest = line.partition(";")
        if not sep or line.startswith("#") or rest.split("#", 1)[0].strip() != "fully-qualified":
            continue
        if group == "Component":
            continue
        if group not in GROUPS:
            raise DataError(f"{path}: unknown emoji group {group!r}; expected one of {', '.join(GROUPS)}")
        sequence = "".join(chr(int(c, 16)) for c in code.split())
        _, _, name = rest.split("#", 1)[1].strip().split(" ", 2)  # character, version, name
        entries.append((sequence, group, name))
    return entries


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"the emoji dataset needs Unicode's emoji-test.txt: run `{_INSTALL_TEST}` (missing {path})")
    return path.read_text(encoding="utf-8")


def _emoji_data() -> dict:
    try:
        import emoji  # imported here: only this dataset needs it
    except ImportError:
        raise DataError("the emoji dataset needs the emoji package (CLDR names and aliases): run "
                        "`pip install emoji`") from None
    return emoji.EMOJI_DATA


def _emoji_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("emoji")
    except PackageNotFoundError:
        return "unknown"


def _load_font():
    from PIL import ImageFont

    path = FONT_PATH
    if not path.is_file():
        raise DataError(f"the emoji dataset needs the Noto Color Emoji font: run `{_INSTALL_FONT}` (missing {path})")
    try:
        return ImageFont.truetype(str(path), _FONT_SIZE)
    except OSError as err:
        raise DataError(f"cannot load {path} as a colour bitmap font at {_FONT_SIZE} px ({err}); "
                        f"reinstall fonts-noto-color-emoji") from None


def caption(sequence: str, name: str, data: dict) -> str:
    """``name`` then the emoji package's aliases (and its name when its words differ), "; "-joined."""
    entry = data.get(sequence, {})
    parts, seen = [name], {_words(name)}
    for alias in [entry.get("en", ""), *entry.get("alias", [])]:
        text = alias.strip(":").replace("_", " ").strip()
        if text and _words(text) not in seen:
            parts.append(text)
            seen.add(_words(text))
    return "; ".join(parts)


def _words(text: str) -> tuple[str, ...]:
    return tuple("".join(c if c.isalnum() else " " for c in text.lower()).split())


# ---- drawing ------------------------------------------------------------------------------
def render_emoji(sequence: str, font, *, image_size: int = DEFAULT_SIZE):
    """``sequence`` drawn as RGB uint8 [S, S, 3] on white, or None when the font does not draw it
    as exactly one glyph (an unsupported sequence falls back to several, side by side) or draws
    nothing (a code point missing from the font)."""
    from PIL import Image, ImageDraw

    if abs(font.getlength(sequence) - font.getlength(_REFERENCE)) > 0.5:
        return None
    canvas = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, _TOP), sequence, font=font, embedded_color=True)
    if canvas.getchannel("A").getbbox() is None:
        return None
    white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, canvas).convert("RGB")
    return np.asarray(image.resize((image_size, image_size), Image.Resampling.LANCZOS))


def _fingerprint() -> dict:
    import PIL

    if not FONT_PATH.is_file():
        _load_font()  # raises the install hint
    stat = FONT_PATH.stat()  # size and mtime: hashing 10 MB on every load would cost more than reading
    return {"version": CACHE_VERSION, "font": [str(FONT_PATH), stat.st_size, stat.st_mtime_ns],
            "emoji_test_sha256": hashlib.sha256(_read_text(EMOJI_TEST_PATH).encode()).hexdigest(),
            "emoji": _emoji_version(), "pillow": PIL.__version__}


def _cached(image_size: int) -> dict:
    """The drawn dataset at ``image_size``: read from the cache, drawn and cached when the cache
    is missing, unreadable or made from other sources."""
    _emoji_data()  # a missing package fails before anything is drawn
    fingerprint = json.dumps(_fingerprint(), sort_keys=True)
    path = emoji_cache_path(image_size)
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["fingerprint"]) == fingerprint:
                return {k: f[k] for k in f.files}
    except (OSError, KeyError, ValueError, EOFError):  # missing or damaged: drawn again
        pass
    arrays = _draw(image_size)
    arrays["fingerprint"] = np.array(fingerprint)
    from genmodels.train.checkpoint import atomic_write  # imported here: train imports data

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    try:
        atomic_write(path, write)
    except OSError:  # an unwritable cache only costs drawing again next time
        pass
    return arrays


def _draw(image_size: int) -> dict:
    from genmodels.progress import progress_bar

    font, data = _load_font(), _emoji_data()
    entries = parse_emoji_test()
    images, kept = [], []
    for entry in progress_bar(entries, desc=f"drawing {len(entries):,} emoji at {image_size} px", leave=False):
        pixels = render_emoji(entry[0], font, image_size=image_size)
        if pixels is not None:
            images.append(pixels.transpose(2, 0, 1))
            kept.append(entry)
    if not kept:
        raise DataError(f"{FONT_PATH} drew none of the {len(entries):,} emoji; reinstall fonts-noto-color-emoji")
    return {"images": np.stack(images), "labels": np.array([GROUPS.index(g) for _, g, _ in kept], np.int64),
            "sequences": np.array([s for s, _, _ in kept]), "names": np.array([n for _, _, n in kept]),
            "captions": np.array([caption(s, n, data) for s, _, n in kept])}


# ---- split --------------------------------------------------------------------------------
def base_emoji(sequence: str) -> str:
    """The sequence without skin tones and presentation selectors: its variants share it."""
    return "".join(c for c in sequence if c not in _SKIN_TONES and c != "\ufe0f")


def split_sequences(entries: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    """{"train": [...], "test": [...]} sequences of emoji-test.txt's ``entries``: per group, whole
    base emoji drawn in a fixed random order join the test side while they fit in 10 % of the
    group's items; each side then in a fixed shuffled order."""
    rng = np.random.default_rng(_SPLIT_SEED)
    train, test = [], []
    for group in GROUPS:
        variants: dict[str, list[str]] = {}
        for sequence, g, _ in entries:
            if g == group:
                variants.setdefault(base_emoji(sequence), []).append(sequence)
        bases = list(variants.values())
        target, held = round(sum(map(len, bases)) * _TEST_FRACTION), 0
        for i in rng.permutation(len(bases)):
            side = test if held + len(bases[i]) <= target else train
            side.extend(bases[i])
            held += len(bases[i]) if side is test else 0
    return {"train": [train[i] for i in rng.permutation(len(train))],
            "test": [test[i] for i in rng.permutation(len(test))]}


def _split_rows(arrays: dict, split: str) -> np.ndarray:
    """Rows of the cached ``arrays`` in ``split``'s order (emoji the font does not draw are absent)."""
    row = {s: i for i, s in enumerate(arrays["sequences"].tolist())}
    parts = split_sequences(parse_emoji_test())
    order = parts["train"] + parts["test"] if split == "all" else parts[split]
    return np.array([row[s] for s in order if s in row], np.int64)
