"""ControlNet: the copy starts as the base, the untrained (or scale-0) controlled model is the base
bit for bit, the base never changes in training, residuals of several nets add, guess mode, the
control extractors and their fidelity, and the run end to end (CLI included)."""

import hashlib

import pytest
import torch

from genmodels.data.control import CONTROL_TYPES, control_fidelity, extract_control, skeletonize
from genmodels.errors import ConfigError
from genmodels.nn.controlnet import ControlledUNet, ControlNet, guess_mode_scales
from genmodels.nn.unet import UNet

OPTIONS = dict(in_channels=1, image_size=16, base_channels=16, channel_mult=(1, 2), attn_resolutions=(8,),
               num_heads=2, num_classes=3)


def _base(**overrides) -> UNet:
    torch.manual_seed(0)
    net = UNet(**{**OPTIONS, **overrides}).eval()
    with torch.no_grad():  # zero-initialised layers (conv_out, attention proj) made live, so outputs differ
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def _control(base: UNet, channels=1, **overrides) -> ControlNet:
    cn = ControlNet(unet_options={**OPTIONS, **overrides}, control_channels=channels).eval()
    cn.copy_from(base)
    return cn


def _wake(net: ControlNet) -> None:
    """Zero convs given weights, as training would."""
    with torch.no_grad():
        for p in net.zero_conv_parameters():
            p.normal_(0, 0.1)


def _inputs(batch=3, channels=1):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, 16, 16, generator=g)
    image = torch.rand(batch, channels, 16, 16, generator=g) * 2 - 1
    return x, torch.rand(batch, generator=g) * 900, {"y": torch.tensor([0, 1, 2][:batch])}, image


@pytest.mark.parametrize("extra_up_block", [True, False])
def test_the_untrained_controlnet_and_scale_zero_leave_the_base_bit_for_bit(extra_up_block):
    base = _base(extra_up_block=extra_up_block)
    cn = _control(base, extra_up_block=extra_up_block)
    x, c, cond, image = _inputs()
    with torch.no_grad():
        plain = base(x, c, cond)
        assert torch.equal(ControlledUNet(base, [cn])(x, c, {**cond, "image": image}), plain)
        _wake(cn)
        assert torch.equal(ControlledUNet(base, [cn], [0.0])(x, c, {**cond, "image": image}), plain)
        steered = ControlledUNet(base, [cn], [1.0])(x, c, {**cond, "image": image})
    assert (steered - plain).abs().max() > 1e-3


def test_the_trainable_copy_starts_equal_to_the_base_encoder():
    base = _base()
    cn = _control(base)
    theirs = base.state_dict()
    own = cn.copy.state_dict()
    assert own and all(torch.equal(v, theirs[k]) for k, v in own.items())
    assert not any(k.startswith(("up.", "conv_out", "norm_out")) for k in own)  # the decoder is not copied
    with pytest.raises(ConfigError, match="layout"):
        ControlNet(unet_options={**OPTIONS, "base_channels": 32}, control_channels=1).copy_from(base)


def test_residuals_of_several_controlnets_add_with_their_scales():
    base = _base()
    a, b = _control(base), _control(base, channels=2)
    _wake(a)
    _wake(b)
    x, c, cond, _ = _inputs()
    img_a, img_b = torch.rand(3, 1, 16, 16), torch.rand(3, 2, 16, 16)
    with torch.no_grad():
        both = ControlledUNet(base, [a, b], [0.7, -0.4])(x, c, {**cond, "image": torch.cat([img_a, img_b], 1)})
        ra, rb = a(x, c, cond, img_a), b(x, c, cond, img_b)
        by_hand = base(x, c, cond, residuals={"skips": [0.7 * p + -0.4 * q for p, q in zip(ra["skips"], rb["skips"])],
                                             "mid": 0.7 * ra["mid"] + -0.4 * rb["mid"]})
    torch.testing.assert_close(both, by_hand, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        ControlledUNet(base, [a, b])(x, c, {**cond, "image": img_a})


def test_guess_mode_hides_the_class_from_the_copy_and_ramps_the_residuals_with_depth():
    scales = guess_mode_scales(4)
    assert scales[0] == pytest.approx(0.1) and scales[-1] == pytest.approx(1.0) and scales == sorted(scales)
    base = _base()
    cn = _control(base)
    _wake(cn)
    x, c, cond, image = _inputs()
    seen = []
    cn.copy.class_embed.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    with torch.no_grad():
        ControlledUNet(base, [cn], guess_mode=True)(x, c, {**cond, "image": image})
    assert torch.equal(seen[-1], torch.full((3,), 3))  # the null class row, not the labels
    with torch.no_grad():
        r = cn(x, c, {}, image)
        ramp = guess_mode_scales(cn.num_skips)
        by_hand = base(x, c, cond, residuals={"skips": [s * d for s, d in zip(r["skips"], ramp)], "mid": r["mid"]})
        torch.testing.assert_close(ControlledUNet(base, [cn], guess_mode=True)(x, c, {**cond, "image": image}),
                                   by_hand, rtol=1e-5, atol=1e-6)


def test_guidance_on_the_class_keeps_the_control_in_both_halves():
    from genmodels.cond import nulled

    base = _base()
    net = ControlledUNet(base, [_control(base)])
    _, _, cond, image = _inputs()
    uncond = nulled(net, ["y"])({**cond, "image": image})
    assert torch.equal(uncond["image"], image) and torch.equal(uncond["y"], torch.full((3,), 3))
    asked = nulled(net, ["y", "image"])({**cond, "image": image})
    assert torch.equal(asked["image"], torch.zeros_like(image))


# ---- extractors --------------------------------------------------------------------------
def _bar(width=5):
    img = -torch.ones(1, 1, 28, 28)
    img[:, :, 4:24, 12:12 + width] = 1
    return img


def test_skeleton_thins_a_thick_bar_to_one_pixel_and_keeps_its_length():
    sk = skeletonize((_bar(5) > 0).float())[0, 0]
    rows = sk.sum(1)
    assert rows[8:20].eq(1).all()  # one pixel wide along the bar
    assert sk.sum(0).nonzero().numel() == 1 and 12 <= sk.sum(0).argmax() <= 16  # one central column


def test_edges_lie_on_the_outline_and_masks_lowres_keep_shape():
    bar = _bar(6)
    e = extract_control("edges", bar)[0, 0] > 0
    assert e[10, 11] or e[10, 12]  # the left side of the bar
    assert not e[14, 14] and not e[0, 0]  # neither its inside nor the background
    assert torch.equal(extract_control("mask", bar) > 0, bar > 0)
    low = extract_control("lowres", bar)
    assert low.shape == bar.shape and low.view(7, 4, 7, 4).amax((1, 3)).eq(low[0, 0, ::4, ::4]).all()
    assert extract_control("lowres", torch.zeros(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    for kind in CONTROL_TYPES:
        maps = extract_control(kind, bar)
        assert maps.min() >= -1 and maps.max() <= 1, kind
    with pytest.raises(ConfigError, match="unknown control type"):
        extract_control("depth", bar)


def test_scribbles_are_seeded_by_the_item_index():
    from genmodels.data import load_dataset

    x = load_dataset("mnist", split="test").x[:6]
    a, b = extract_control("scribble", x), extract_control("scribble", x[3:], first_index=3)
    assert torch.equal(a[3:], b)
    sk = extract_control("skeleton", x) > 0
    assert ((a > 0) & ~(torch.nn.functional.max_pool2d(sk.float(), 3, 1, 1) > 0)).sum() == 0  # within the skeleton's reach


@pytest.mark.parametrize("kind", list(CONTROL_TYPES))
def test_real_images_follow_their_own_controls_and_unmatched_pairs_do_not(kind):
    from genmodels.data import load_dataset

    x = load_dataset("mnist", split="test").x[:64]
    maps = extract_control(kind, x)
    own = control_fidelity(kind, x, maps)
    assert torch.allclose(own, torch.ones_like(own))
    shuffled = control_fidelity(kind, x, maps.roll(1, 0)).mean()
    assert shuffled < 0.9, (kind, shuffled)


# ---- the run ------------------------------------------------------------------------------
def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state_hash(net) -> str:
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from genmodels.config import load_config
    from genmodels.train.run import prepare, train
    from tests.conftest import TINY_UNET

    root = tmp_path_factory.mktemp("controlnet")
    fast = ["train.batch_size=16", "train.device=cpu", "train.minutes=null", "train.warmup_images=0"]
    train(load_config("mnist-cfg", TINY_UNET + ["train.images=32", *fast]), root / "base")
    files = {name: _sha(root / "base" / name) for name in ("model.safetensors", "ema.safetensors")}
    trainer = prepare(load_config("mnist-controlnet", [f"model.base={root / 'base'}", "train.images=64",
                                                       "control.zero_lr_scale=10", *fast]), root / "edges")
    base_net = trainer.phases[0].module.base
    before = _state_hash(base_net)
    trainer.fit()
    return dict(root=root, files=files, before=before, after=_state_hash(base_net))


def test_training_never_changes_the_base_and_wakes_the_zero_convs(runs):
    from genmodels.families import load_run

    root = runs["root"]
    assert runs["before"] == runs["after"]
    assert {n: _sha(root / "base" / n) for n in runs["files"]} == runs["files"]
    control = load_run(root / "edges", device="cpu").modules["control"]
    assert any(p.abs().sum() > 0 for p in control.zero_conv_parameters())
    record = (root / "edges" / "config.json").read_text()
    assert '"model.base"' in record and runs["files"]["ema.safetensors"] in record


def test_the_pipeline_at_scale_zero_is_the_base_and_controls_are_read_every_way(runs, tmp_path):
    from genmodels.families import load
    from genmodels.images import save_images

    root = runs["root"]
    pipe, base = load(root / "edges", device="cpu"), load(root / "base", device="cpu")
    kw = dict(steps=3, labels=[1, 2], guidance=2.0, progress=False)
    assert torch.equal(pipe.sample(2, control="test:0-1", control_scale=0, **kw), base.sample(2, **kw))
    default = pipe.sample(2, **kw)  # asked for classes 1 and 2: the first test images of those classes' controls
    from genmodels.data import load_dataset

    test = load_dataset("mnist", split="test")
    first = [int((test.y == k).nonzero()[0]) for k in (1, 2)]
    assert torch.equal(default, pipe.sample(2, control=extract_control("edges", test.x[first]), **kw))
    unlabelled = dict(kw, labels=None, guidance=1.0)
    assert torch.equal(pipe.sample(2, **unlabelled), pipe.sample(2, control_from="test:0-1", **unlabelled))
    default = pipe.sample(2, control_from="test:0-1", **kw)
    maps = pipe.control_images(2, "test:0-1")
    assert torch.equal(pipe.sample(2, control=maps, **kw), default)
    save_images(test.x[:1], tmp_path)
    digit = str(next(tmp_path.glob("*.png")))
    one = pipe.control_images(2, digit, control_type="edges")
    assert torch.equal(one[0], maps[0]) and torch.equal(one[1], maps[0])  # one control for all
    assert pipe.sample(600, steps=1, progress=False, batch_size=600).shape[0] == 600  # more samples than test images
    with pytest.raises(ConfigError, match="reads edges maps"):
        pipe.control_images(2, digit, control_type="skeleton")
    with pytest.raises(ConfigError, match="28x28"):
        pipe.control_images(2, torch.zeros(1, 1, 16, 16))
    with pytest.raises(ConfigError, match="one control per ControlNet"):
        pipe.control_images(2, ["test:0", "test:1"])
    guided = pipe.sample(2, control_from="test:0-1", guide_control="on", **kw)
    assert not torch.equal(guided, default) and torch.isfinite(guided).all()
    assert torch.equal(pipe.sample(2, control_from="test:0-1", guidance_keys=["y", "image"], **kw), guided)
    two = pipe.with_controlnets([root / "edges"])
    assert len(two.controls) == 2
    x2 = two.sample(2, control=["test:0-1", "test:0-1"], control_scale=[1.0, 0.0], **kw)
    assert torch.equal(x2, default)


def test_the_cli_samples_a_controlnet_run_and_refuses_bad_input(runs, tmp_path, capsys):
    from genmodels.cli import main

    root = runs["root"]
    main(["sample", str(root / "edges"), "--n", "2", "--steps", "2", "--control-from", "test:3-4",
          "--control-scale", "0.5", "--guess-mode", "on", "--class", "3", "--out", str(tmp_path / "g.png")])
    assert "g.png" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sample", str(root / "edges"), "--n", "2", "--control", "test:99999", "--out", str(tmp_path / "x.png")])
    assert "test split" in capsys.readouterr().err


def test_a_controlnet_config_without_a_base_or_on_a_non_diffusion_run_fails_in_one_line(runs, tmp_path):
    from genmodels.config import load_config
    from genmodels.train.run import prepare

    with pytest.raises(ConfigError, match="model.base is required"):
        prepare(load_config("mnist-controlnet", ["train.device=cpu"]), tmp_path / "a")
    with pytest.raises(ConfigError, match="control.type is required"):
        prepare(load_config("mnist-controlnet", [f"model.base={runs['root'] / 'base'}", "control.type=null",
                                                 "train.device=cpu"]), tmp_path / "b")


def test_a_controlnet_on_a_latent_run_reads_pixel_controls_through_its_strided_hint_encoder(tmp_path):
    import genmodels
    from genmodels.config import load_config
    from genmodels.train.run import train
    from tests.test_autoencoder import TINY_AE
    from tests.test_latent import TINY_LDM

    few = ["train.images=64", "train.sample_every_images=100000", "train.checkpoint_every_images=100000"]
    train(load_config("fashion-ae", TINY_AE + few + ["ae.disc_start_images=1000000", "ae.perceptual=none"]),
          tmp_path / "ae")
    train(load_config("fashion-ldm", TINY_LDM + few + [f"latent.autoencoder={tmp_path / 'ae'}"]), tmp_path / "ldm")
    train(load_config("mnist-controlnet", ["data.name=digits", f"model.base={tmp_path / 'ldm'}", "control.type=lowres",
                                           "train.batch_size=16", "train.device=cpu", "train.minutes=null",
                                           "control.zero_lr_scale=10", *few]), tmp_path / "cn")
    pipe, base = genmodels.load(tmp_path / "cn", device="cpu"), genmodels.load(tmp_path / "ldm", device="cpu")
    control = pipe.controls[0]
    assert control.factor == pipe.data_shape[-1] // pipe.latent_shape[-1] > 1
    kw = dict(sampler="ddim", steps=2, labels=[0, 1], progress=False)  # each run samples by its own section otherwise
    assert torch.equal(pipe.sample(2, control_scale=0, **kw), base.sample(2, **kw))
    x = pipe.sample(2, **kw)
    assert x.shape[1:] == pipe.data_shape and torch.isfinite(x).all()
    assert pipe.config.latent.autoencoder == base.config.latent.autoencoder  # the base's sections, inherited



def test_gradients_reach_the_copy_and_the_hint_encoder_once_the_zero_convs_wake(runs):
    """Zero convs block the gradient to everything before them at step one (their weights are
    zero); after a few steps the copy and the hint encoder's first conv have moved off the base."""
    from genmodels.families import load_run

    root = runs["root"]
    control = load_run(root / "edges", device="cpu", weights="model").modules["control"]
    base = load_run(root / "base", device="cpu").modules["net"]
    theirs = base.state_dict()
    moved = [k for k, v in control.copy.state_dict().items() if not torch.equal(v, theirs[k])]
    assert len(moved) > len(control.copy.state_dict()) // 2, moved
    assert control.hint.layers[0].weight.abs().sum() > 0
