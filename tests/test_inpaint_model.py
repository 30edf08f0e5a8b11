"""The inpainting model (the Stable Diffusion inpainting recipe, model.concat_cond [mask, masked]):
the served batches carry random masks and x * (1 - mask), reproducibly after a resume; the network
reads them; inference keeps the pixels outside the mask exactly (pixel and latent runs); a tiny
model learns a trivially learnable completion; bad configs fail with one line."""

import pytest
import torch
from PIL import Image

import genmodels
from genmodels.config import load_config
from genmodels.data import InfiniteBatches
from genmodels.data.datasets import Dataset
from genmodels.data.loader import CAPTION_STREAM, POSTERIOR_STREAM
from genmodels.data.masking import MASK_STREAM, batch_transforms, masked_inputs
from genmodels.edit.inpaint_model import inpaint_with_model
from genmodels.edit.masks import make_mask, resolve_mask
from genmodels.errors import ConfigError
from genmodels.nn.unet import UNet
from genmodels.train.run import DROPOUT_STREAM, train
from genmodels.train.trainer import NOISE_STREAM
from tests.test_autoencoder import TINY_AE
from tests.test_cli import assert_one_line_error, run_cli

TINY = ["data.name=digits", "model.base_channels=16", "model.channel_mult=[1]", "model.num_res_blocks=1",
        "model.attn_resolutions=[]", "train.batch_size=32", "train.device=cpu", "train.images=320",
        "train.minutes=null", "train.log_every_images=320", "train.sample_every_images=100000",
        "train.checkpoint_every_images=100000", "train.warmup_images=0"]
HALVES = [make_mask(side, (8, 8))[0] for side in ("top", "bottom", "left", "right")]


def _batches(masks, seed=0):
    cfg = load_config("mnist-inpaint", [f"inpaint.masks=[{', '.join(masks)}]"])
    x = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return InfiniteBatches(Dataset("noise", x, None, (), "image"), 8, seed=seed,
                           transforms=batch_transforms(cfg, (1, 8, 8)))


def test_served_batches_hold_masks_of_the_configured_kinds_and_the_masked_image():
    for _ in range(3):
        batch = next(_batches(["half"]))
        mask, masked = batch["cond"]["mask"], batch["cond"]["masked"]
        assert mask.shape == (8, 1, 8, 8) and masked.shape == (8, 1, 8, 8)
        assert torch.equal(masked, batch["x"] * (1 - mask))
        assert all(any(torch.equal(m, h) for h in HALVES) for m in mask)  # every mask one of the halves
    assert (next(_batches(["full"]))["cond"]["mask"] == 1).all()
    mixed = torch.cat([next(b)["cond"]["mask"] for b in [_batches(["box", "strokes"], seed=s) for s in range(4)]])
    assert ((mixed == 0) | (mixed == 1)).all() and 0 < mixed.mean() < 1
    assert not any(torch.equal(m, h) for m in mixed for h in HALVES)  # no halves unless asked for


def test_masks_are_fresh_per_batch_and_the_same_after_a_resume():
    a = _batches(["box", "strokes", "half"])
    for _ in range(3):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(8)]  # crosses epochs (5 batches each)
    resumed = _batches(["box", "strokes", "half"])
    resumed.load_state_dict(state)
    for want, got in zip(expected, [next(resumed) for _ in range(8)]):
        assert torch.equal(want["x"], got["x"]) and torch.equal(want["cond"]["mask"], got["cond"]["mask"])
    assert not torch.equal(expected[0]["cond"]["mask"], expected[1]["cond"]["mask"])
    # its own stream: the data order, noise, dropout, posterior draws and captions are unchanged
    assert MASK_STREAM not in (NOISE_STREAM, DROPOUT_STREAM, POSTERIOR_STREAM, CAPTION_STREAM)


def test_latent_batches_carry_the_pixel_mask_to_the_latent_grid():
    cfg = load_config("mnist-inpaint", ["inpaint.masks=[half]"])
    z = torch.randn(16, 2, 4, 4)
    batch = next(InfiniteBatches(Dataset("latents", z, None, (), "image"), 16, seed=0,
                                 transforms=batch_transforms(cfg, (1, 8, 8))))
    mask = batch["cond"]["mask"]
    assert mask.shape == (16, 1, 4, 4) and torch.equal(batch["cond"]["masked"], batch["x"] * (1 - mask))
    assert all(any(torch.equal(m, h[:, ::2, ::2]) for h in HALVES) for m in mask)


def test_the_network_output_changes_with_the_mask_and_the_masked_image():
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, base_channels=16, channel_mult=(1,), num_res_blocks=1,
               attn_resolutions=(), concat_cond=("mask", "masked")).eval()
    with torch.no_grad():  # untrained, but no zero-initialised layer: a plain UNet's output conv starts at 0
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    x, t, image = torch.randn(2, 1, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out = {name: net(x, t, masked_inputs(image, resolve_mask(name, 2, (8, 8)))) for name in ("top", "left")}
        other = net(x, t, masked_inputs(torch.randn(2, 1, 8, 8), resolve_mask("top", 2, (8, 8))))
    assert (out["top"] - out["left"]).abs().max() > 1e-3
    assert (out["top"] - other).abs().max() > 1e-3


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpaint")
    # class-conditional too, so guidance on the labels can be checked alongside the mask
    train(load_config("mnist-inpaint", TINY + ["model.num_classes=auto", "diffusion.label_dropout=0.2"]), root / "run")
    return genmodels.load(root / "run", device="cpu")


def test_outside_the_mask_the_result_is_the_input_exactly(pixel_run):
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    for spec in ("center", "strokes:3", "left"):
        out = inpaint_with_model(pixel_run, images, spec, seed=0, steps=5)
        keep = resolve_mask(spec, 4, (8, 8)) == 0
        assert torch.equal(out[keep.expand_as(out)], images[keep.expand_as(images)])
        assert torch.isfinite(out).all() and not torch.equal(out, images)
    guided = inpaint_with_model(pixel_run, images, "center", seed=0, steps=5, labels=3, guidance=3.0)
    keep = resolve_mask("center", 4, (8, 8)) == 0
    assert torch.equal(guided[keep.expand_as(guided)], images[keep.expand_as(images)])
    unguided = inpaint_with_model(pixel_run, images, "center", seed=0, steps=5, labels=3)
    assert not torch.equal(guided, unguided)  # guidance acts (on y; mask and masked in both halves)
    again = inpaint_with_model(pixel_run, images, "center", seed=0, steps=5)
    assert torch.equal(again, inpaint_with_model(pixel_run, images, "center", seed=0, steps=5))
    plain = pixel_run.sample(2, seed=0, steps=5, progress=False)  # no mask given: a full one
    assert plain.shape == (2, 1, 8, 8) and torch.isfinite(plain).all()


def test_a_latent_run_pastes_the_pixels_back_exactly(tmp_path):
    train(load_config("fashion-ae", TINY_AE + ["train.images=64", "ae.disc_start_images=1000000",
                                               "ae.perceptual=none"]), tmp_path / "ae")
    train(load_config("emoji-inpaint", TINY + [f"latent.autoencoder={tmp_path / 'ae'}", "train.images=64"]),
          tmp_path / "run")
    pipe = genmodels.load(tmp_path / "run", device="cpu")
    assert pipe.latent is not None and pipe.latent_shape == (2, 4, 4)
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    out = inpaint_with_model(pipe, images, "box:1,1,5,4", seed=1, steps=4)
    keep = (resolve_mask("box:1,1,5,4", 3, (8, 8)) == 0).expand_as(images)
    assert torch.equal(out[keep], images[keep]) and not torch.equal(out[~keep], images[~keep])


def _constant_folder(root, n, seed):
    """``n`` 8 x 8 gray PNGs, each one constant level: the known half fixes the unknown one."""
    g = torch.Generator().manual_seed(seed)
    root.mkdir()
    for i, level in enumerate(torch.randint(0, 256, (n,), generator=g).tolist()):
        Image.new("L", (8, 8), level).save(root / f"{i:04d}.png")
    return root


def test_a_tiny_inpainting_model_learns_to_complete_constant_images(tmp_path):
    data = _constant_folder(tmp_path / "constant", 256, seed=0)
    overrides = TINY + [f"data.name=folder:{data}", "data.image_size=8", "data.channels=1", "inpaint.masks=[half, full]",
                        "train.lr=3e-3", "train.ema_halflife_images=500", "train.ema_rampup=0"]
    train(load_config("mnist-inpaint", overrides + ["train.images=32000"]), tmp_path / "trained")
    train(load_config("mnist-inpaint", overrides + ["train.images=32"]), tmp_path / "untrained")
    levels = torch.linspace(-0.9, 0.9, 16)
    images = levels.reshape(-1, 1, 1, 1).expand(16, 1, 8, 8).contiguous()

    def completion_error(run, spec):
        out = inpaint_with_model(genmodels.load(run, device="cpu"), images, spec, seed=0, steps=20)
        region = resolve_mask(spec, 16, (8, 8)).bool()
        return (out - images)[region].square().mean().item()

    trained = completion_error(tmp_path / "trained", "right")
    assert trained < 0.06  # measured 0.027 (the untrained model: 0.84, plain sampling: 0.77)
    assert trained * 5 < completion_error(tmp_path / "untrained", "right")
    plain = genmodels.load(tmp_path / "trained", device="cpu").sample(16, seed=0, steps=20, progress=False)
    assert trained * 5 < (plain - images).square().mean().item()  # the mask, not luck, told it the level


def test_bad_inpainting_configs_fail_with_one_line(tmp_path, capsys, pixel_run):
    code, _, err = run_cli(["train", "mnist-inpaint", "inpaint.masks=[]", "--out", tmp_path / "a"], capsys)
    assert_one_line_error(code, err, "inpaint.masks is empty")
    code, _, err = run_cli(["train", "mnist-ddpm", "inpaint.masks=[box]", "--out", tmp_path / "b"], capsys)
    assert_one_line_error(code, err, "model.concat_cond")
    code, _, err = run_cli(["train", "mnist-inpaint", "inpaint.masks=[circle]", "--out", tmp_path / "c"], capsys)
    assert_one_line_error(code, err, "circle", "box, strokes, half, full")
    code, _, err = run_cli(["train", "mnist-inpaint", "inpaint.full_rate=2", "--out", tmp_path / "d"], capsys)
    assert_one_line_error(code, err, "inpaint.full_rate")
    with pytest.raises(ConfigError, match="images must have shape"):
        inpaint_with_model(pixel_run, torch.zeros(2, 3, 8, 8), "top")


def test_a_run_without_concat_cond_is_sent_to_repaint(tmp_path):
    train(load_config("mnist-ddpm", TINY + ["train.images=32"]), tmp_path / "plain")
    with pytest.raises(ConfigError, match="not trained as an inpainting model .*use RePaint"):
        inpaint_with_model(genmodels.load(tmp_path / "plain", device="cpu"), torch.zeros(1, 1, 8, 8), "top")


def test_stroke_discs_drawn_on_their_boxes_equal_a_whole_grid_test():
    from genmodels.edit.masks import _discs

    g = torch.Generator().manual_seed(0)
    for size in ((8, 8), (28, 28), (17, 40)):
        centers = (torch.rand(30, 2, generator=g) * torch.tensor(size)).tolist()
        radii2 = (torch.rand(30, generator=g) * 20 + 0.5).tolist()
        ys, xs = torch.meshgrid(torch.arange(size[0], dtype=torch.float32),
                                torch.arange(size[1], dtype=torch.float32), indexing="ij")
        naive = torch.zeros(size, dtype=torch.bool)
        for (cy, cx), r2 in zip(centers, radii2):
            naive |= (ys - cy) ** 2 + (xs - cx) ** 2 <= r2
        assert torch.equal(_discs(centers, radii2, size), naive.float())
