"""Editing: masks, RePaint (jumps, paste-back, the exact conditional of a Gaussian), outpainting,
img2img, inversion edits with and without null optimisation, and the CLI verbs."""

import json

import pytest
import torch

import genmodels
from genmodels.config import load_config
from genmodels.edit.inpaint import evaluations, inpaint, repaint_schedule, repaint_walk
from genmodels.edit.inversion import inversion_edit, null_parameters, psnr
from genmodels.edit.masks import as_mask, latent_mask, make_mask, resolve_mask, stroke_mask, training_masks
from genmodels.edit.outpaint import outpaint, parse_pad, tile_origins
from genmodels.errors import ConfigError
from genmodels.images import read_parameters
from genmodels.samplers import generate
from genmodels.train.run import train
from tests.conftest import TINY_UNET
from tests.test_cli import assert_one_line_error, run_cli
from tests.test_seams import ToyVE, gaussian_denoiser


# ---- masks -----------------------------------------------------------------------------------------
def test_mask_specs_cover_what_they_name():
    size = (6, 8)
    assert make_mask("top", size)[0, 0, :3].all() and not make_mask("top", size)[0, 0, 3:].any()
    assert make_mask("left", size)[0, 0, :, :4].all() and not make_mask("left", size)[0, 0, :, 4:].any()
    assert make_mask("bottom", size).sum() == make_mask("right", size).sum() == 24
    center = make_mask("center", size)[0, 0]
    assert center.sum() == 3 * 4 and center[1:4, 2:6].all()
    box = make_mask("box:1,2,4,5", size)[0, 0]
    assert box.sum() == 9 and box[2:5, 1:4].all()
    assert make_mask("full", size).all()
    a, b = make_mask("strokes:3", (28, 28)), make_mask("strokes:3", (28, 28))
    assert torch.equal(a, b) and 0 < a.mean() < 1 and not torch.equal(a, make_mask("strokes:4", (28, 28)))


@pytest.mark.parametrize("spec, message", [("middle", "unknown mask 'middle'"), ("box:1,2,3", "expected 4 integer"),
                                           ("box:5,0,2,3", "the box must satisfy"), ("strokes:x", "expected 1")])
def test_bad_mask_specs_name_the_problem(spec, message):
    with pytest.raises(ConfigError, match=message):
        make_mask(spec, (8, 8))


def test_masks_from_tensors_and_pngs(tmp_path):
    from PIL import Image

    assert as_mask(torch.ones(4, 4), 3, (4, 4)).shape == (3, 1, 4, 4)
    with pytest.raises(ConfigError, match="only 0 .keep. and 1"):
        as_mask(torch.full((4, 4), 0.5), 1, (4, 4))
    with pytest.raises(ConfigError, match=r"\(H, W\) = \(4, 4\)"):
        as_mask(torch.ones(5, 4), 1, (4, 4))
    pixels = torch.zeros(16, 16, dtype=torch.uint8)
    pixels[:8] = 255  # white top half, drawn at twice the image's size
    Image.fromarray(pixels.numpy()).save(tmp_path / "m.png")
    assert torch.equal(resolve_mask(tmp_path / "m.png", 2, (8, 8)), make_mask("top", (8, 8)).expand(2, 1, 8, 8))


def test_training_masks_and_latent_masks():
    g = torch.Generator().manual_seed(0)
    masks = training_masks(["box", "strokes", "half", "full"], 200, (16, 16), g)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    share = masks.flatten(1).mean(1)
    assert (share == 1).any() and (share < 1).sum() > 100  # full masks and partial ones
    halves = training_masks(["half"], 50, (16, 16), g)
    assert torch.allclose(halves.flatten(1).mean(1), torch.full((50,), 0.5))
    with pytest.raises(ConfigError, match="unknown training mask kind"):
        training_masks(["ring"], 1, (8, 8), g)
    small = latent_mask(make_mask("box:3,3,5,5", (16, 16)), (4, 4))  # covers parts of 4 latent cells
    assert small.sum() == 4 and stroke_mask((8, 8), g).shape == (1, 8, 8)


# ---- RePaint on closed forms -------------------------------------------------------------------------
def test_the_jump_schedule_goes_back_up_after_the_steps_it_repeats():
    assert repaint_schedule(10) == [(0, 10)]
    assert repaint_schedule(10, 5, 3) == [(0, 5), (5, 0), (0, 5), (5, 0), (0, 10)]
    assert repaint_schedule(6, 2, 2) == [(0, 2), (2, 0), (0, 4), (4, 2), (2, 6)]
    assert evaluations(10, 5, 3) == 20 and evaluations(50) == 50
    with pytest.raises(ConfigError, match="longer than"):
        repaint_schedule(4, 5, 2)


RHO = 0.95


def correlated_denoiser(x, sigma, cond=None):
    """The exact denoiser of N(0, [[1, rho], [rho, 1]]) in VE coordinates."""
    cov = torch.tensor([[1, RHO], [RHO, 1.0]], dtype=torch.float64)
    gain = cov @ torch.linalg.inv(cov + float(sigma) ** 2 * torch.eye(2, dtype=torch.float64))
    return (x.double() @ gain.T).to(x.dtype)


def repaint_toy(jump_length, jump_n_sample, n=3000, sampler="ddpm"):
    known = torch.zeros(n, 2)
    known[:, 0] = 2.0  # x1 = 2 is known; x2 | x1 ~ N(rho * 2, 1 - rho^2)
    mask = torch.tensor([0.0, 1.0]).expand(n, 2)
    return generate(correlated_denoiser, ToyVE(), shape=(2,), seeds=range(n), sampler=sampler, steps=50,
                    walk=repaint_walk(known, mask, range(n), jump_length=jump_length, jump_n_sample=jump_n_sample))


def test_repaint_jumps_reach_the_exact_conditional_of_a_gaussian():
    """Pasting alone leaves x2 far from its conditional (the known half never informs the unknown
    one at high noise); the resampling jumps bring mean and std to the closed form. A port with
    the jump loop around single steps, or without the final paste, fails this."""
    true_mean, true_std = 2 * RHO, (1 - RHO**2) ** 0.5
    plain, jumped = repaint_toy(0, 1), repaint_toy(5, 10)
    assert (plain[:, 0] == 2).all() and (jumped[:, 0] == 2).all()  # the known value, exactly
    plain_error = abs(plain[:, 1].mean().item() - true_mean)
    jumped_error = abs(jumped[:, 1].mean().item() - true_mean)
    assert plain_error > 0.3  # measured 0.50
    assert jumped_error < 0.05 and jumped_error < plain_error / 5  # measured 0.016 (std error 0.006)
    assert abs(jumped[:, 1].std().item() - true_std) < 0.05


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "heun"])
def test_repaint_with_an_all_unknown_mask_is_plain_sampling_and_all_known_returns_the_input(sampler):
    seeds, shape = range(5), (3,)
    plain = generate(gaussian_denoiser, ToyVE(), shape=shape, seeds=seeds, sampler=sampler, steps=8)
    known = torch.randn(5, 3)
    free = generate(gaussian_denoiser, ToyVE(), shape=shape, seeds=seeds, sampler=sampler, steps=8,
                    walk=repaint_walk(known, torch.ones(5, 3), seeds))
    torch.testing.assert_close(free, plain, rtol=0, atol=0)
    fixed = generate(gaussian_denoiser, ToyVE(), shape=shape, seeds=seeds, sampler=sampler, steps=8,
                     walk=repaint_walk(known, torch.zeros(5, 3), seeds, jump_length=2, jump_n_sample=3))
    assert torch.equal(fixed, known)


def test_the_callback_sees_every_step_of_the_walk_once():
    seen = []
    generate(gaussian_denoiser, ToyVE(), shape=(2,), seeds=range(2), sampler="ddim", steps=6,
             walk=repaint_walk(torch.zeros(2, 2), torch.ones(2, 2), range(2), jump_length=2, jump_n_sample=2),
             callback=lambda i, sigma, x, d: seen.append(i))
    assert seen == list(range(evaluations(6, 2, 2)))


def test_outpaint_tiles_cover_the_canvas():
    assert tile_origins(28, 28, 14) == [0]
    assert tile_origins(56, 28, 14) == [0, 14, 28]
    assert tile_origins(60, 28, 14) == [0, 14, 28, 32]
    assert parse_pad("left:14, right:3") == {"left": 14, "right": 3}
    for bad in ("left14", "middle:3", "left:-2", "left:0"):
        with pytest.raises(ConfigError):
            parse_pad(bad)


# ---- on a trained model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A tiny class-conditional MNIST DDPM with label dropout (CFG), trained briefly."""
    out = tmp_path_factory.mktemp("edit") / "cfg"
    overrides = TINY_UNET + ["model.num_classes=auto", "diffusion.label_dropout=0.2", "train.batch_size=32",
                             "train.images=9600", "train.device=cpu", "train.lr=2e-3", "train.warmup_images=0",
                             "train.log_every_images=3200", "train.sample_every_images=100000",
                             "train.ema_halflife_images=1000", "sample.steps=20"]
    train(load_config("mnist-cfg", overrides), out)
    return out


@pytest.fixture(scope="module")
def test_digits():
    from genmodels.data import load_dataset

    test = load_dataset("mnist", split="test")
    return test.x[:6], test.y[:6]


def test_inpainting_keeps_the_outside_exactly_and_fills_the_inside(mnist_run, test_digits):
    pipe = genmodels.load(mnist_run, device="cpu")
    x, y = test_digits
    out = inpaint(pipe, x, "center", seed=0, steps=10, jump_length=0, labels=y.tolist(), progress=False)
    mask = make_mask("center", (28, 28)).bool().expand_as(x)
    assert torch.equal(out[~mask], x[~mask])
    assert (out[mask] - x[mask]).abs().mean() > 0.05  # regenerated, not copied
    again = inpaint(pipe, x, "center", seed=0, steps=10, jump_length=0, labels=y.tolist(), progress=False)
    assert torch.equal(out, again)
    jumped = inpaint(pipe, x, "center", seed=0, steps=10, jump_length=2, jump_n_sample=2, labels=y.tolist(),
                     progress=False)
    assert torch.equal(jumped[~mask], x[~mask]) and not torch.equal(jumped, out)
    full = inpaint(pipe, x, "full", seed=3, sampler="ddpm", steps=10, jump_length=0, labels=y.tolist(),
                   progress=False)
    torch.testing.assert_close(full, pipe.sample(6, seed=3, sampler="ddpm", steps=10, labels=y.tolist(),
                                                 progress=False), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="not trained as an inpainting model|was not trained"):
        inpaint(pipe, x, "center", method="model", steps=4, progress=False)
    with pytest.raises(ConfigError, match=r"do not fit this model's \(1, 28, 28\)"):
        inpaint(pipe, torch.zeros(1, 1, 8, 8), "top", progress=False)


def test_outpainting_grows_the_canvas_and_keeps_the_original(mnist_run, test_digits):
    pipe = genmodels.load(mnist_run, device="cpu")
    x, _ = test_digits
    canvas = outpaint(pipe, x[:2], {"left": 14, "right": 14}, seed=0, steps=6, progress=False)
    assert canvas.shape == (2, 1, 28, 56)
    assert torch.equal(canvas[..., 14:42], x[:2])
    assert (canvas[..., :14] != 0).float().mean() > 0.5  # the border was drawn, not left at its zero fill


def test_img2img_from_strength_one_is_plain_sampling_and_moves_away_with_strength(mnist_run, test_digits):
    pipe = genmodels.load(mnist_run, device="cpu")
    x, y = test_digits
    kw = dict(steps=20, labels=y.tolist(), progress=False, sampler="ddim")
    plain = pipe.sample(6, seed=0, **kw)
    top = pipe.sample(6, seed=0, init_images=x, strength=1.0, **kw)
    assert torch.equal(top, plain) and (plain - plain.roll(1, 0)).abs().mean() > 0.1
    distances = [(pipe.sample(6, seed=0, init_images=x, strength=s, **kw) - x).abs().mean().item()
                 for s in (0.05, 0.3, 0.6, 0.9)]
    assert distances[0] < 0.02 and distances == sorted(distances), distances


def test_inversion_reconstructs_at_w1_and_null_optimisation_fixes_the_drift_at_w3(mnist_run, test_digits):
    pipe = genmodels.load(mnist_run, device="cpu")
    x, y = test_digits
    source = {"labels": y.tolist()}
    plain1 = inversion_edit(pipe, x, source=source, target=source, guidance=1.0, steps=20)
    plain3 = inversion_edit(pipe, x, source=source, target=source, guidance=3.0, steps=20)
    fixed3 = inversion_edit(pipe, x, source=source, target=source, guidance=3.0, steps=20, null_optimisation=True,
                            inner_steps=10)
    assert plain1.psnr.mean() > 25  # the stated bound; measured on this tiny model: see BENCHMARKS.md
    assert plain3.psnr.mean() < plain1.psnr.mean() - 3
    assert fixed3.psnr.mean() > plain3.psnr.mean() + 1.5  # measured +2.4 dB with 10 Adam steps per step
    edit = inversion_edit(pipe, x, source=source, target={"labels": 8}, guidance=3.0, steps=20)
    assert (edit.edited - plain3.edited).abs().mean() > 0.02  # the target changes the result
    assert psnr(x, x + 0.02).allclose(torch.tensor(40.0))  # 10 log10(4 / 0.0004)


def test_null_parameters_replace_only_the_null_row(mnist_run):
    pipe = genmodels.load(mnist_run, device="cpu")
    params = null_parameters(pipe.net, ["y"])
    start, build = params["net.class_embed.weight"]
    full = build(start + 1)
    weight = pipe.net.class_embed.weight
    assert torch.equal(full[:-1], weight[:-1]) and torch.equal(full[-1], weight[-1] + 1)
    with pytest.raises(ConfigError, match="null optimisation on text"):
        null_parameters(pipe.net, ["text"])


# ---- CLI ---------------------------------------------------------------------------------------------
def test_the_editing_verbs_write_pngs_with_their_parameters(mnist_run, tmp_path, capsys):
    def ok(args):
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        return out

    out = tmp_path / "inpaint.png"
    ok(["inpaint", mnist_run, "--test", "3", "--mask", "strokes:1", "--n", "2", "--steps", "4", "--class", "3",
        "--out", out])
    params = read_parameters(out)
    assert params["mask"] == "strokes:1" and params["method"] == "repaint" and params["steps"] == 4
    assert params["seed"] == 0 and params["class"] == 3
    # what ran, defaults filled in: RePaint's ddpm and jumps (5, shortened to the 4 steps; 3 passes)
    assert params["sampler"] == "ddpm" and params["jump_length"] == 4 and params["jump_n_sample"] == 3
    ok(["img2img", mnist_run, "--test", "2", "--strength", "0.4", "--steps", "5", "--out", tmp_path / "i.png"])
    assert read_parameters(tmp_path / "i.png")["strength"] == 0.4
    ok(["outpaint", mnist_run, "--test", "1", "--pad", "top:7", "--steps", "3", "--out", tmp_path / "o.png"])
    assert read_parameters(tmp_path / "o.png")["pad"] == {"top": 7}
    printed = ok(["edit", mnist_run, "--test", "2", "--source-class", "3", "--target-class", "8", "--steps", "5",
                  "--out", tmp_path / "e.png"])
    assert "reconstruction PSNR" in printed
    assert json.dumps(read_parameters(tmp_path / "e.png")["target"]) == '{"labels": 8}'


@pytest.mark.parametrize("args, message", [
    (["inpaint", "--input", "SMALL", "--mask", "top"], "resize the input to 28x28"),
    (["inpaint", "--test", "2", "--mask", "ring"], "unknown mask 'ring'"),
    (["inpaint", "--mask", "top"], "give --input IMAGE"),
    (["outpaint", "--test", "1", "--pad", "up:3"], "SIDE:PIXELS"),
    (["edit", "--test", "1"], "needs a class or a prompt"),
])
def test_editing_verbs_refuse_bad_input_in_one_line(mnist_run, tmp_path, capsys, args, message):
    from PIL import Image

    Image.new("L", (10, 10)).save(tmp_path / "small.png")
    args = [str(tmp_path / "small.png") if a == "SMALL" else a for a in args]
    code, _, err = run_cli([args[0], mnist_run, *args[1:]], capsys)
    assert_one_line_error(code, err, message)


def test_the_runs_eta_goes_only_to_the_runs_own_sampler(mnist_run):
    """sample.eta = 0 belongs to the run's sampler; Euler ancestral asked for by name keeps its own
    eta (1), or it would silently be the deterministic Euler step (DDIM)."""
    pipe = genmodels.load(mnist_run, device="cpu")
    own = pipe.config.sample.sampler
    assert pipe.sample_settings()["eta"] == pipe.config.sample.eta == 0.0
    assert pipe.sample_settings(sampler=own)["eta"] == 0.0
    assert pipe.sample_settings(sampler="euler_ancestral")["eta"] is None
    assert pipe.sample_settings(sampler="euler_ancestral", eta=0.5)["eta"] == 0.5
    x = torch.zeros(2, 1, 28, 28)
    kw = dict(sampler="euler_ancestral", steps=4, jump_length=0, progress=False)
    assert not torch.equal(inpaint(pipe, x, "top", **kw), inpaint(pipe, x, "top", eta=0.0, **kw))
