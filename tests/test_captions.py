"""Tests for genmodels.data.captions: measurers on drawn shapes with known answers and on real
MNIST, the fixed word thresholds, caption styles read back word by word, held-out combinations."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genmodels.data import Dataset, load_dataset
from genmodels.data import captions as C
from genmodels.errors import ConfigError


def _canvas(n=1, side=28):
    return -np.ones((n, 1, side, side), np.float32)


def _bar(width, *, length=22, shear=0.0, value=1.0):
    """A vertical bar ``width`` px wide whose column offset is ``shear * y`` (y up from its middle)."""
    x = _canvas()
    top = (28 - length) // 2
    for r in range(top, top + length):
        y = (2 * top + length - 1) / 2 - r
        left = int(round(14 - width / 2 + shear * y))
        x[0, 0, r, left:left + width] = value
    return x


def _square(*, top=6, left=6, side=16, value=1.0, outline=False):
    x = _canvas()
    x[0, 0, top:top + side, left:left + side] = value
    if outline:
        x[0, 0, top + 1:top + side - 1, left + 1:left + side - 1] = -1
    return x


# ---------------------------------------------------------------- drawn shapes


@pytest.mark.parametrize("length", [10, 16, 24])
def test_a_bar_is_as_thick_as_it_is_wide_at_any_length(length):
    widths = [1, 2, 3, 4, 5, 6]
    measured = [C.stroke_thickness(_bar(w, length=length))[0] for w in widths]
    assert np.all(np.diff(measured) > 0)
    # without the half-width per free end a 6 x 10 bar would measure 6 * 10 / 4 = 15
    np.testing.assert_allclose(measured, widths, rtol=0.15)


def test_horizontal_bars_and_rings():
    for w in (2, 3, 4):
        x = _canvas()
        x[0, 0, 12:12 + w, 3:25] = 1
        assert C.stroke_thickness(x)[0] == pytest.approx(w, rel=0.15)
    rows, cols = np.mgrid[:28, :28]
    radius = np.hypot(rows - 13.5, cols - 13.5)
    rings = np.stack([np.where((radius <= 11) & (radius > 11 - w), 1.0, -1.0) for w in (2, 3, 4, 5)])
    ring_thickness = C.stroke_thickness(rings[:, None].astype(np.float32))  # closed: no free ends
    assert np.all(np.diff(ring_thickness) > 0) and 1.5 < ring_thickness[0] < ring_thickness[-1] < 6


def test_zhang_suen_gives_a_centred_one_pixel_line_and_is_idempotent():
    mask = _bar(5)[:, 0] > 0
    skeleton = C.zhang_suen(mask)
    assert (skeleton <= mask).all()
    assert skeleton.sum(2).max() == 1  # one pixel per row
    columns = np.flatnonzero(skeleton[0].any(0))
    assert set(columns) <= {13, 14}  # the bar covers columns 12..16 (rounded from 11.5)
    assert np.array_equal(C.zhang_suen(skeleton), skeleton)


@pytest.mark.parametrize("shear", [-0.6, -0.3, 0.0, 0.3, 0.6])
def test_sheared_bar_slant_is_the_shear_drawn(shear):
    measured = C.slant(_bar(3, shear=shear))[0]
    assert measured == pytest.approx(shear, abs=0.03)
    assert np.sign(measured) == np.sign(shear) or shear == 0  # top to the right: positive


def test_box_size_width_and_position_of_a_drawn_rectangle():
    x = _canvas()
    x[0, 0, 5:15, 8:20] = 1  # rows 5..14, columns 8..19
    box = C.bounding_box(x)
    assert (box.top[0], box.left[0], box.bottom[0], box.right[0]) == (5, 8, 14, 19)
    assert C.size(x)[0] == pytest.approx(10 * 12 / 28**2)
    assert C.width(x)[0] == pytest.approx(12 / 28)
    cx, cy = C.position(x)
    assert (cx[0], cy[0]) == pytest.approx((14 / 28, 10 / 28))


def test_fill_and_brightness_are_separate_axes():
    solid, outline = _square(), _square(outline=True)
    assert C.fill(solid)[0] == pytest.approx(1.0)
    assert C.fill(outline)[0] == pytest.approx(60 / 256)
    dim, bright = _square(value=-0.4), _square(value=0.8)  # ink 0.3 and 0.9
    np.testing.assert_allclose(C.brightness(np.concatenate([dim, bright])), [0.3, 0.9], atol=1e-6)
    np.testing.assert_allclose(C.fill(np.concatenate([dim, bright])), [1.0, 1.0])
    assert C.size(dim, threshold=C.FLOOR)[0] == pytest.approx(C.size(bright)[0])


def test_blank_images_and_background_noise():
    blank = torch.full((2, 1, 28, 28), -1.0)
    for kind in C.KINDS:
        assert all(np.array_equal(v, [0.0, 0.0]) for v in C.measure(blank, kind).values())
    assert np.isnan(C.bounding_box(blank).top).all()
    assert C.position(blank)[0].tolist() == [0.5, 0.5]
    assert all(len(v) == 0 for v in C.measure(torch.empty(0, 1, 28, 28), "mnist").values())
    # ink below FLOOR is background: faint noise changes nothing
    bar = torch.from_numpy(_bar(4, shear=0.3))
    noisy = torch.maximum(bar, -1 + 0.18 * torch.rand(bar.shape, generator=torch.Generator().manual_seed(0)))
    for kind in C.KINDS:
        for name, value in C.measure(noisy, kind).items():
            assert value == pytest.approx(C.measure(bar, kind)[name]), name
    # a 2 x 2 dot, which Zhang-Suen erases, still has a thickness
    dot = _canvas()
    dot[0, 0, 10:12, 10:12] = 1
    assert 1 < C.stroke_thickness(dot)[0] < 2.5


def test_measurers_refuse_colour_and_split_into_chunks_exactly(monkeypatch):
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\].*x\[:, :1\]"):
        C.stroke_thickness(torch.zeros(2, 3, 28, 28))
    x = torch.from_numpy(np.concatenate([_bar(w, shear=s) for w in (1, 3, 5) for s in (-0.4, 0.2)]))
    whole = {kind: C.measure(x, kind) for kind in C.KINDS}
    monkeypatch.setattr(C, "_CHUNK", 4)
    for kind in C.KINDS:
        for name, value in C.measure(x.numpy(), kind).items():
            np.testing.assert_array_equal(value, whole[kind][name])


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", split="train")


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion", split="train")


@pytest.fixture(scope="module")
def mnist_measured(mnist):
    return C.measure(mnist.x, "mnist")


def test_mnist_attributes_have_sensible_spread(mnist, mnist_measured):
    thickness, slant, wide = mnist_measured["thickness"], mnist_measured["slant"], mnist_measured["width"]
    q25, q50, q75 = np.quantile(thickness, [0.25, 0.5, 0.75])
    assert 1.5 < q50 < 3.5 and (q75 - q25) / q50 > 0.15
    assert 0.15 < slant.std() < 0.5 and np.mean(np.abs(slant) < 1) > 0.99
    y = mnist.y.numpy()
    ones = wide[y == 1].mean()
    assert all(ones < wide[y == k].mean() - 0.1 for k in range(10) if k != 1)  # 1 is the narrow digit


def test_thickening_and_mirroring_real_digits(mnist, mnist_measured):
    x = mnist.x[:1000]
    thicker = C.stroke_thickness(F.max_pool2d(x, 3, stride=1, padding=1))  # grows a pixel on each side
    gain = thicker - mnist_measured["thickness"][:1000]
    assert np.mean(gain > 0) > 0.97 and 1.5 < np.median(gain) < 3.5
    np.testing.assert_allclose(C.slant(x.flip(-1)), -mnist_measured["slant"][:1000], atol=1e-9)


def test_shearing_real_digits_adds_the_shear(mnist, mnist_measured):
    k = 0.3
    x = mnist.x[:1000].clone()
    for r in range(28):  # shift row r by k * (its height above the middle), rounded
        x[:, :, r] = torch.roll(x[:, :, r], int(round(k * (13.5 - r))), dims=-1)
    gain = C.slant(x) - mnist_measured["slant"][:1000]
    assert np.median(gain) == pytest.approx(k, abs=0.05)


def test_fixed_thresholds_split_train_into_balanced_bins(mnist, fashion):
    for kind, data in (("mnist", mnist), ("fashion", fashion)):
        for name, codes in C.attribute_codes(data.x, kind).items():
            share = np.bincount(codes, minlength=len(C.WORDS[kind][name])) / len(codes)
            n = len(share)
            assert np.all(np.abs(share - 1 / n) < 0.05), (kind, name, share)


def test_codes_index_the_word_tables():
    for kind in C.KINDS:
        assert C.WORDS[kind].keys() == C.THRESHOLDS[kind].keys() == C.MEASURES[kind].keys()
        for name, cuts in C.THRESHOLDS[kind].items():
            assert len(C.WORDS[kind][name]) == len(cuts) + 1 and list(cuts) == sorted(cuts)
            values = np.array([cuts[0] - 1, cuts[0], cuts[-1] + 1])
            assert C.codes_of({n: values for n in C.THRESHOLDS[kind]}, kind)[name].tolist() == [0, 1, len(cuts)]
    with pytest.raises(ConfigError, match="mnist, fashion"):
        C.measure(torch.zeros(1, 1, 28, 28), "emoji")


# ---------------------------------------------------------------- captions read back


def _stated(text, kind):
    """The code of each attribute whose word ``text`` contains (-1: none); fails on two words."""
    found = {}
    for name, words in C.WORDS[kind].items():
        hits = [k for k, word in enumerate(words) if re.search(rf"\b{word}\b", text)]
        assert len(hits) <= 1, (text, name)
        found[name] = hits[0] if hits else -1
    return found


def _names_class(text, kind, label):
    if kind == "mnist":
        named = {k for k in range(10) if re.search(rf"\b({k}|{C.NUMBER_WORDS[k]})\b", text)}
    else:  # "shirt" is inside "t-shirt": read the longest noun that fits
        nouns = [k for k, noun in enumerate(C.FASHION_NOUNS) if re.search(rf"(?<![\w-]){noun}\b", text)]
        named = set(nouns)
    return named == {label}


@pytest.fixture(scope="module")
def fashion_small():
    data = load_dataset("fashion", split="test")
    return Dataset("fashion", data.x[:3000], data.y[:3000], data.class_names, "image")


@pytest.mark.parametrize("phrasing", C.PHRASINGS)
@pytest.mark.parametrize("holdout", [True, False])
def test_descriptive_captions_state_the_measured_words(mnist, fashion_small, phrasing, holdout):
    for kind, data in (("mnist", mnist), ("fashion", fashion_small)):
        captions = C.caption_set(data, "descriptive", phrasing=phrasing, holdout=holdout)
        measured = C.attribute_codes(data.x, kind)
        assert len(captions) == len(data) and captions.labels is data.y
        n_templates = len(C.TEMPLATES["descriptive"][kind][phrasing])
        for i in range(0, len(data), 7):
            assert len(captions.texts[i]) == n_templates
            asked = {n: int(v[i]) for n, v in captions.requested.items()}
            assert all(asked[n] in (-1, measured[n][i]) for n in asked)
            for text in captions.texts[i]:
                assert _stated(text, kind) == asked, text
                assert _names_class(text, kind, int(data.y[i])), text


def test_train_and_heldout_phrasings_never_coincide(mnist):
    train = C.caption_set(mnist, "descriptive")
    heldout = C.caption_set(mnist, "descriptive", phrasing="heldout")
    assert not {t for ts in train.texts for t in ts} & {t for ts in heldout.texts for t in ts}
    assert C.caption_set(mnist, "descriptive").texts == train.texts  # deterministic


def test_holdout_hides_every_combination_from_training_text(mnist):
    y = mnist.y.numpy()
    for holdout in (True, False):
        captions = C.caption_set(mnist, "descriptive", holdout=holdout)
        for combination in C.HELDOUT_COMBINATIONS["mnist"]:
            wanted = {n: C.WORDS["mnist"][n].index(w) for n, w in combination.items() if n != "label"}
            said = [i for i in np.flatnonzero(y == combination["label"])
                    if any(all(_stated(t, "mnist")[n] == c for n, c in wanted.items()) for t in captions.texts[i])]
            # the comment above HELDOUT_COMBINATIONS promises >= 20 such training items
            assert len(said) == 0 if holdout else len(said) >= 20, (combination, len(said))
    masked = C.caption_set(mnist, "descriptive").requested
    assert (masked["width"] >= 0).all()  # attributes outside the combinations stay
    assert ((masked["thickness"] == -1) == (masked["slant"] == -1)).all()


def test_fashion_combinations_occur_in_train(fashion):
    codes, y = C.attribute_codes(fashion.x, "fashion"), fashion.y.numpy()
    hidden = C.heldout_mask(y, codes, "fashion")
    for combination in C.HELDOUT_COMBINATIONS["fashion"]:
        match = y == combination["label"]
        named = [name for name in combination if name != "label"]
        for name in named:
            match &= codes[name] == C.WORDS["fashion"][name].index(combination[name])
        assert match.sum() >= 20 and all(hidden[name][match].all() for name in named)
    assert not hidden["size"].any()


@pytest.mark.parametrize("kind", C.KINDS)
def test_heldout_prompts_ask_for_exactly_the_combinations(kind):
    prompts = C.heldout_prompts(kind, repeats=2)
    combos = C.HELDOUT_COMBINATIONS[kind]
    assert len(prompts) == 2 * len(combos) * len(C.TEMPLATES["descriptive"][kind]["heldout"])
    for i, text in enumerate(prompts.texts):
        label = int(prompts.labels[i])
        assert _names_class(text, kind, label), text
        assert _stated(text, kind) == {n: int(v[i]) for n, v in prompts.requested.items()}, text
        asked = {n: C.WORDS[kind][n][int(v[i])] for n, v in prompts.requested.items() if v[i] >= 0}
        assert {"label": label, **asked} in combos
    train = C.heldout_prompts(kind, phrasing="train")
    assert not set(train.texts) & set(prompts.texts)
    with pytest.raises(ConfigError, match="mnist, fashion"):
        C.heldout_prompts("emoji")


def test_prompt_set_picks_one_phrasing_per_item_by_seed(mnist):
    data = Dataset("mnist", mnist.x[:300], mnist.y[:300], mnist.class_names, "image")
    pool = C.caption_set(data, "descriptive", phrasing="heldout", holdout=False)
    first, again = C.prompt_set(data, "descriptive", seed=0), C.prompt_set(data, "descriptive", seed=0)
    other = C.prompt_set(data, "descriptive", seed=1)
    assert first.texts == again.texts and first.texts != other.texts
    assert all(t in options for t, options in zip(first.texts, pool.texts))
    used = {"number" if t.startswith("number ") else "picture" if t.startswith("a picture") else "word"
            for t in first.texts}
    assert len(used) == 3  # every held-out template is drawn
    for name, value in pool.requested.items():
        np.testing.assert_array_equal(first.requested[name], value)
        assert (value >= 0).all()  # prompts are never masked


def test_terse_and_names():
    captions = ("grinning face; grinning", "flag: Japan", "red heart; heart; red heart")
    emoji = Dataset("emoji", torch.zeros(3, 3, 8, 8), torch.tensor([0, 8, 7]), ("a",) * 9, "image", captions=captions)
    assert C.caption_set(emoji, "names").texts == (("grinning face", "grinning"), ("flag: Japan",),
                                                   ("red heart", "heart"))
    assert C.caption_set(emoji, "names", phrasing="heldout").texts[1] == ("an emoji of flag: Japan",
                                                                         "flag: Japan, as an emoji")
    terse = C.caption_set(emoji, "terse")
    assert terse.texts == (("grinning face",), ("flag: Japan",), ("red heart",)) and terse.requested == {}
    digits = load_dataset("digits", split="test")
    assert C.caption_set(digits, "terse").texts[:2] == ((str(int(digits.y[0])),), (str(int(digits.y[1])),))
    assert C.caption_set(digits, "terse", phrasing="heldout").texts[0] == (C.NUMBER_WORDS[int(digits.y[0])],)
    fashion = Dataset("fashion", torch.zeros(2, 1, 28, 28), torch.tensor([9, 1]), (), "image")
    assert C.caption_set(fashion, "terse", phrasing="heldout").texts == (("an ankle boot",), ("a trouser",))


def test_styles_a_dataset_cannot_have_are_refused_with_the_ones_it_can():
    emoji = Dataset("emoji", torch.zeros(1, 3, 8, 8), torch.tensor([0]), ("a",), "image", captions=("x",))
    with pytest.raises(ConfigError, match="emoji cannot have descriptive captions; it supports terse, names$"):
        C.caption_set(emoji, "descriptive")
    mnist = Dataset("mnist", torch.zeros(1, 1, 28, 28), torch.tensor([0]), ("0",), "image")
    with pytest.raises(ConfigError, match="it supports descriptive, terse$"):
        C.caption_set(mnist, "names")
    with pytest.raises(ConfigError, match="neither labels nor captions"):
        C.caption_set(load_dataset("moons", n_points=10), "terse")
    with pytest.raises(ConfigError, match="choose one of descriptive, terse, names"):
        C.caption_set(mnist, "poetic")
    with pytest.raises(ConfigError, match="choose one of train, heldout"):
        C.caption_set(mnist, "terse", phrasing="test")


def test_descriptive_measures_resized_and_repeated_channel_sets_at_28(mnist):
    native = C.caption_set(mnist, "descriptive", holdout=False).requested
    x = F.interpolate(mnist.x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    resized = Dataset("mnist", x.clamp(-1, 1).expand(-1, 3, -1, -1), mnist.y, mnist.class_names, "image")
    for name, codes in C.caption_set(resized, "descriptive", holdout=False).requested.items():
        assert np.mean(codes == native[name]) > 0.8, name


def test_render_drops_parts_and_fixes_articles():
    assert C.render("a[ {thickness}] {digit}[, {slant}]", {"digit": "8"}) == "an 8"
    assert C.render("a[ {size}] {noun}", {"noun": "one"}) == "a one"
    assert C.render("a[ {size}] {noun}", {"noun": "ankle boot", "size": "large"}) == "a large ankle boot"
