"""The built-in emoji dataset: what it draws, its split, its captions, its cache and its errors.

Drawing all ~3,650 emoji takes a few seconds, so the 64 px set is loaded once per module (into the
session's isolated cache); the cache tests use a few lines of emoji-test.txt at 48 px.
"""

import collections
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.data import Dataset, load_dataset
from genmodels.data import emoji as emoji_data
from genmodels.data.emoji import GROUPS, base_emoji, emoji_items, render_emoji
from genmodels.errors import DataError

pytestmark = pytest.mark.skipif(not (emoji_data.FONT_PATH.is_file() and emoji_data.EMOJI_TEST_PATH.is_file()),
                                reason="needs fonts-noto-color-emoji and unicode-data (scripts/setup installs them)")

WAVE, MEDIUM = "\U0001F44B", "\U0001F3FD"


@pytest.fixture(scope="module")
def splits(_isolated_cache):
    return {split: load_dataset("emoji", split=split) for split in ("train", "test", "all")}


@pytest.fixture(scope="module")
def items(splits):
    return {split: emoji_items(split) for split in ("train", "test", "all")}


def test_every_image_is_drawn_in_range(splits):
    x = splits["all"].x
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 64, 64) and len(x) > 3000
    assert x.min() >= -1 and x.max() <= 1
    ink = (x < 0.8).flatten(1).sum(1)  # pixels clearly off the white ground
    assert (ink > 20).all(), f"{(ink <= 20).sum()} blank images"
    corners = x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners > 0.99).float().mean() > 0.9  # composited on white


def test_labels_are_the_nine_groups_and_all_is_train_then_test(splits, items):
    data = splits["all"]
    assert data.class_names == GROUPS and len(GROUPS) == 9
    assert set(data.y.tolist()) == set(range(9))
    train, test = splits["train"], splits["test"]
    assert len(train) + len(test) == len(data)
    assert torch.equal(data.x, torch.cat([train.x, test.x])) and torch.equal(data.y, torch.cat([train.y, test.y]))
    assert items["all"].sequences == items["train"].sequences + items["test"].sequences
    assert [GROUPS[i] for i in data.y] == list(items["all"].groups)


def test_split_holds_out_whole_emoji_ten_percent_per_group(items):
    train, test = items["train"], items["test"]
    assert not set(train.sequences) & set(test.sequences)
    assert not {base_emoji(s) for s in train.sequences} & {base_emoji(s) for s in test.sequences}
    n_train, n_test = collections.Counter(train.groups), collections.Counter(test.groups)
    for group in GROUPS:
        assert 0.08 <= n_test[group] / (n_train[group] + n_test[group]) <= 0.12, group
    # the skin tones of one emoji go together: waving hand and its five tones lie on one side
    side = train if WAVE in train.sequences else test
    assert {WAVE + chr(c) for c in range(0x1F3FB, 0x1F400)} <= set(side.sequences)


def test_order_is_shuffled(splits):
    first = splits["train"].y[:64]
    assert len(set(first.tolist())) >= 6  # the file is sorted by group; a grid shows variety
    assert not torch.equal(splits["train"].y, splits["train"].y.sort().values)


def test_known_items_and_captions(splits, items):
    every = items["all"]
    assert len(splits["all"].captions) == len(every) == len(splits["all"])
    where = {s: i for i, s in enumerate(every.sequences)}
    grin = where["\U0001F600"]
    assert every.names[grin] == "grinning face" and every.groups[grin] == "Smileys & Emotion"
    assert splits["all"].captions[grin] == "grinning face; grinning"
    assert splits["all"].y[grin] == GROUPS.index("Smileys & Emotion")
    tone = where[WAVE + MEDIUM]
    assert every.names[tone] == "waving hand: medium skin tone" and every.groups[tone] == "People & Body"
    x = splits["all"].x
    assert (x[tone] - x[where[WAVE]]).abs().mean() > 0.02  # another colour, same outline
    assert every.names[where["\U0001F1EF\U0001F1F5"]] == "flag: Japan"
    assert all(c.split("; ")[0] == n for c, n in zip(every.captions, every.names))
    assert "Component" not in every.groups and "\U0001F3FB" not in where  # the bare swatch is a component


def test_one_glyph_check_rejects_what_the_font_cannot_join():
    font = emoji_data._load_font()
    assert render_emoji("\U0001F600", font).shape == (64, 64, 3)
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"  # a ZWJ sequence the font has: one glyph
    assert render_emoji(family, font) is not None
    assert render_emoji("\U0001F600\u200d\U0001F34E", font) is None  # grinning face + ZWJ + apple: two glyphs
    assert render_emoji("\U0001F600\U0001F34E", font) is None
    assert render_emoji("\ue000", font) is None  # a private-use code point: one advance, no ink


def test_second_load_reads_the_cache(splits, monkeypatch):
    monkeypatch.setattr(emoji_data, "_draw", lambda size: pytest.fail("drew the emoji again"))
    again = load_dataset("emoji", split="test")
    assert torch.equal(again.x, splits["test"].x) and again.captions == splits["test"].captions
    assert emoji_data.emoji_cache_path(64).is_file()


def _small_emoji_test(path, n_per_group=4):
    """emoji-test.txt cut to a few fully-qualified lines of each group."""
    kept, counts, group = [], collections.Counter(), None
    for line in emoji_data.EMOJI_TEST_PATH.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line
            kept.append(line)
        elif "; fully-qualified" in line and counts[group] < n_per_group:
            counts[group] += 1
            kept.append(line)
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return path


def test_cache_is_redrawn_when_a_source_changes(tmp_path, monkeypatch):
    font = tmp_path / "NotoColorEmoji.ttf"
    shutil.copy(emoji_data.FONT_PATH, font)
    monkeypatch.setattr(emoji_data, "FONT_PATH", font)
    monkeypatch.setattr(emoji_data, "EMOJI_TEST_PATH", _small_emoji_test(tmp_path / "emoji-test.txt"))
    draws = []
    draw = emoji_data._draw
    monkeypatch.setattr(emoji_data, "_draw", lambda size: draws.append(size) or draw(size))
    first = load_dataset("emoji", split="all", image_size=48)
    assert len(first) == 36 and first.shape == (3, 48, 48) and draws == [48]
    assert torch.equal(load_dataset("emoji", split="all", image_size=48).x, first.x) and draws == [48]
    with open(emoji_data.EMOJI_TEST_PATH, "a", encoding="utf-8") as f:  # another emoji-test.txt
        f.write("1F9FF ; fully-qualified # \U0001F9FF E11.0 nazar amulet\n")
    assert len(load_dataset("emoji", split="all", image_size=48)) == 37 and draws == [48, 48]
    stat = font.stat()  # the font replaced: another mtime
    import os

    os.utime(font, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_dataset("emoji", split="all", image_size=48)
    assert draws == [48, 48, 48]


def test_image_sizes(splits):
    small = load_dataset("emoji", split="test", image_size=32)
    assert small.shape == (3, 32, 32) and len(small) == len(splits["test"])
    assert small.captions == splits["test"].captions
    for bad in (28, 128, 0):
        with pytest.raises(DataError, match="32, 48, 64 px"):
            load_dataset("emoji", image_size=bad)
    with pytest.raises(DataError, match="channel"):
        load_dataset("emoji", channels=1)


def test_missing_sources_name_the_install_command(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(emoji_data, "FONT_PATH", tmp_path / "NotoColorEmoji.ttf")
        with pytest.raises(DataError) as err:
            load_dataset("emoji")
        assert "apt-get install -y fonts-noto-color-emoji" in str(err.value)
        assert str(tmp_path / "NotoColorEmoji.ttf") in str(err.value) and "\n" not in str(err.value)
    with monkeypatch.context() as m:
        m.setattr(emoji_data, "EMOJI_TEST_PATH", tmp_path / "emoji-test.txt")
        with pytest.raises(DataError, match=r"apt-get install -y unicode-data.*emoji-test\.txt"):
            load_dataset("emoji")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "emoji", None)  # import emoji now raises ImportError
        with pytest.raises(DataError, match="pip install emoji"):
            load_dataset("emoji")


def test_dataset_checks_the_caption_count():
    x = torch.zeros(2, 1, 4, 4)
    assert Dataset("two", x, None, (), "image", captions=("a", "b")).captions == ("a", "b")
    assert Dataset("two", x, None, (), "image").captions == ()
    with pytest.raises(DataError, match="2 items but 1 captions"):
        Dataset("two", x, None, (), "image", captions=("a",))


def test_data_show_writes_names_under_the_images(splits, tmp_path, capsys):
    from genmodels.cli import main

    main(["data", "show", "emoji", "--n", "16", "--out", str(tmp_path / "emoji.png")])
    assert f"emoji (train): {len(splits['train']):,} items of shape (3, 64, 64), 9 classes" in capsys.readouterr().out
    grid = np.asarray(Image.open(tmp_path / "emoji.png").convert("L"))
    tile = 64 * 2  # --n 16: 4 x 4 tiles, each image scaled 2x with two lines of text below it
    assert grid.shape[1] == 4 * (tile + 4) + 4 and grid.shape[0] > 4 * (tile + 20)
    band = grid[4 + tile + 2: 4 + tile + 14, 4: 4 + tile]  # the first caption's first line
    assert (band < 128).sum() > 30  # dark text pixels on white


def test_feature_cnn_shifts_uncover_the_white_ground():
    from genmodels.metrics.features import RECIPES, Recipe, random_affine

    recipe = RECIPES["emoji"]
    assert recipe.fill == 1.0 and recipe.shift > 0
    white = torch.ones(4, 3, 64, 64)
    moved = random_affine(white, recipe, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(moved, white, atol=1e-5)  # -1 would frame each shifted emoji in black
    black = -torch.ones(4, 1, 28, 28)  # the digits' default: uncovered pixels are their black ground
    assert torch.allclose(random_affine(black, Recipe(epochs=1, shift=2), generator=torch.Generator()), black)
