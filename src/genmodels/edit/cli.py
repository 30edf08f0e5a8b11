"""The editing verbs: ``genmodels inpaint``, ``outpaint``, ``img2img`` and ``edit``. Each reads
its images from ``--input`` (a PNG, a folder of images or an .npz) or ``--test N`` (the run's own
test images), writes one PNG grid whose ``genmodels`` text chunk records every parameter
(``genmodels.images.read_parameters``), and prints what it wrote."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import click
import torch

from ..errors import GenmodelsError

__all__ = ["COMMANDS", "read_inputs"]


def test_split(pipe):
    """The run's own test split (its data section's dataset, size and channels)."""
    from ..data import run_split

    return run_split(pipe.config.data)


def read_inputs(pipe, input_path, test: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images [N, C, H, W] in [-1, 1], their labels or None) from ``--input`` or ``--test N``,
    checked against the run's image shape; every editing, restoration and anomaly verb reads its
    images here."""
    from ..images import load_image, load_image_set

    shape = tuple(pipe.data_shape)
    if len(shape) != 3:
        raise GenmodelsError("editing works on image runs; this run's data are 2-D points")
    if (input_path is None) == (test is None):
        raise GenmodelsError("give --input IMAGE (a PNG, a folder or an .npz) or --test N (the run's test images)")
    if test is not None:
        data = pipe.config.data
        split = test_split(pipe)
        if test < 1 or test > len(split):
            raise GenmodelsError(f"--test {test}: the test split of '{data.name}' has {len(split)} images")
        return split.x[:test], None if split.y is None else split.y[:test]
    path = Path(input_path)
    if path.is_dir() or path.suffix == ".npz":
        images = load_image_set(path)
    else:
        images = load_image(path, channels=shape[0])
    if tuple(images.shape[1:]) != shape:
        raise GenmodelsError(f"{path}: images of size {tuple(images.shape[1:])} (C, H, W), but this model draws "
                             f"{shape}; resize the input to {shape[2]}x{shape[1]} pixels")
    return images, None


def shared_options(command):
    """The options every editing verb takes."""
    options = [
        click.argument("run_dir", type=click.Path(path_type=Path)),
        click.option("--input", "input_path", default=None, type=click.Path(path_type=Path),
                     help="An image (PNG/JPEG), a folder of images or an .npz, at the model's size."),
        click.option("--test", default=None, type=int, help="Use the first N test images of the run's dataset."),
        click.option("--n", "per_image", default=1, show_default=True, help="Results per input image."),
        click.option("--seed", default=0, show_default=True, help="Result j of input i uses seed + j * N + i."),
        click.option("--sampler", default=None, help="Default: the run's sample.sampler (RePaint: ddpm)."),
        click.option("--steps", default=None, type=int, help="Default: the run's sample.steps."),
        click.option("--eta", default=None, type=float),
        click.option("--class", "class_", default=None, type=int, help="Class-conditional runs: the class."),
        click.option("--prompt", default=None, help="Text-to-image runs: the prompt."),
        click.option("--guidance", default=1.0, show_default=True, help="Classifier-free guidance scale."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def condition_kwargs(class_, prompt, guidance) -> dict:
    out = {"guidance": guidance}
    if class_ is not None:
        out["labels"] = class_
    if prompt is not None:
        out["prompt"] = prompt
    return out


def repeat(images: torch.Tensor, times: int) -> torch.Tensor:
    """``times`` copies of the batch, copy-major (result j of image i at j * N + i)."""
    if times < 1:
        raise GenmodelsError(f"--n must be >= 1, got {times}")
    return images.repeat(times, *[1] * (images.ndim - 1))


def _load(run_dir, device):
    from ..families import load
    from ..families.diffusion import Pipeline

    pipe = load(run_dir, device=device)
    if not isinstance(pipe, Pipeline):
        raise GenmodelsError(f"'{run_dir}' is a {pipe.config.family} run; editing needs a diffusion or flow run")
    return pipe


def _save(rows, out, parameters, nrow) -> None:
    from ..images import save_with_parameters

    save_with_parameters(torch.cat(rows).clamp(-1, 1), out, parameters, nrow=nrow, scale=2)


def _common_parameters(run_dir, input_path, test, seed, sampler, steps, eta, class_, prompt, guidance, pipe):
    settings = pipe.sample_settings(sampler=sampler, steps=steps, eta=eta)
    return {"run": str(run_dir), "input": str(input_path) if input_path else f"test:{test}", "seed": seed,
            **settings, "class": class_, "prompt": prompt, "guidance": guidance}


def timed(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        message = fn(*args, **kwargs)
        click.echo(f"{message} ({time.perf_counter() - t0:.1f} s)")
    return wrapper


@click.command(help="Regenerate a masked region (white = regenerate) with RePaint on any diffusion/flow run, or "
                    "with a trained inpainting model (model.concat_cond: [mask, masked]).\n\n\b\nExamples:\n"
                    "  genmodels inpaint runs/mnist --test 8 --mask center --n 4 --out inpaint.png\n"
                    "  genmodels inpaint runs/mnist --input digit.png --mask mask.png --jump-length 5 "
                    "--jump-n-sample 3")
@shared_options
@click.option("--mask", "mask", required=True,
              help="A PNG (white = regenerate) or top, bottom, left, right, center, full, box:X0,Y0,X1,Y1, "
                   "strokes:SEED.")
@click.option("--method", type=click.Choice(["auto", "repaint", "model"]), default="auto", show_default=True,
              help="auto: the trained model when the run is an inpainting model, else RePaint.")
@click.option("--jump-length", default=None, type=int,
              help="RePaint: steps between resampling jumps (default 5; 0: none).")
@click.option("--jump-n-sample", default=None, type=int, help="RePaint: passes over each jump (default 3; 1: none).")
@click.option("--out", "out", default="inpaint.png", show_default=True)
@timed
def inpaint_command(run_dir, input_path, test, per_image, seed, sampler, steps, eta, class_, prompt, guidance, device,
                    mask, method, jump_length, jump_n_sample, out):
    from .inpaint import inpaint, inpaint_settings
    from .masks import resolve_mask

    pipe = _load(run_dir, device)
    images, _ = read_inputs(pipe, input_path, test)
    n = len(images)
    masks = resolve_mask(mask, n, tuple(images.shape[2:]))
    done = inpaint(pipe, repeat(images, per_image), repeat(masks, per_image), method=method, seed=seed,
                   sampler=sampler, steps=steps, eta=eta, jump_length=jump_length, jump_n_sample=jump_n_sample,
                   progress=False, **condition_kwargs(class_, prompt, guidance))
    shown = torch.where(masks.bool().expand_as(images), torch.full_like(images, 0.0), images)  # the hole in gray
    parameters = {**_common_parameters(run_dir, input_path, test, seed, sampler, steps, eta, class_, prompt, guidance,
                                       pipe),
                  "verb": "inpaint", "mask": str(mask),
                  **inpaint_settings(pipe, method=method, sampler=sampler, steps=steps, eta=eta,
                                     jump_length=jump_length, jump_n_sample=jump_n_sample)}
    _save([images, shown, done], out, parameters, nrow=n)
    return f"{n} image(s) x {per_image} completion(s), mask {mask} -> {out} (rows: input, mask, completions)"


@click.command(help="Extend the canvas by inpainting the new border, in overlapping tiles of the model's size.\n\n"
                    "\b\nExample:\n  genmodels outpaint runs/mnist --input digit.png --pad left:14,right:14 "
                    "--out wide.png")
@shared_options
@click.option("--pad", required=True, help="SIDE:PIXELS pairs, e.g. left:14,right:14 (sides top, bottom, left, right).")
@click.option("--overlap", default=None, type=int, help="Pixels shared by neighbouring tiles (default: half the size).")
@click.option("--method", type=click.Choice(["auto", "repaint", "model"]), default="auto", show_default=True)
@click.option("--jump-length", default=None, type=int, help="RePaint: as for inpaint (default 5).")
@click.option("--jump-n-sample", default=None, type=int, help="RePaint: as for inpaint (default 3).")
@click.option("--out", "out", default="outpaint.png", show_default=True)
@timed
def outpaint_command(run_dir, input_path, test, per_image, seed, sampler, steps, eta, class_, prompt, guidance,
                     device, pad, overlap, method, jump_length, jump_n_sample, out):
    from .inpaint import inpaint_settings
    from .outpaint import outpaint, parse_pad

    sides = parse_pad(pad)
    pipe = _load(run_dir, device)
    images, _ = read_inputs(pipe, input_path, test)
    canvas = outpaint(pipe, repeat(images, per_image), sides, overlap=overlap, seed=seed, method=method,
                      sampler=sampler, steps=steps, eta=eta, jump_length=jump_length, jump_n_sample=jump_n_sample,
                      progress=False, **condition_kwargs(class_, prompt, guidance))
    parameters = {**_common_parameters(run_dir, input_path, test, seed, sampler, steps, eta, class_, prompt, guidance,
                                       pipe),
                  "verb": "outpaint", "pad": sides, "overlap": overlap,
                  **inpaint_settings(pipe, method=method, sampler=sampler, steps=steps, eta=eta,
                                     jump_length=jump_length, jump_n_sample=jump_n_sample)}
    _save([canvas], out, parameters, nrow=len(images))
    return f"{len(canvas)} canvas(es) of {canvas.shape[3]}x{canvas.shape[2]} -> {out}"


@click.command(short_help="img2img / SDEdit: noise an image part-way and denoise it.", help="img2img / SDEdit (Meng et al. 2022): noise the input to the strength's noise level and denoise "
                    "from there; --class or --prompt on conditional runs.\n\n\b\nExample:\n  genmodels img2img "
                    "runs/mnist --input sketch.png --strength 0.6 --n 4 --out img2img.png")
@shared_options
@click.option("--strength", default=0.6, show_default=True,
              help="Share of the sampling steps run, in (0, 1]: 1 = ignore the input, small = stay close.")
@click.option("--out", "out", default="img2img.png", show_default=True)
@timed
def img2img_command(run_dir, input_path, test, per_image, seed, sampler, steps, eta, class_, prompt, guidance, device,
                    strength, out):
    pipe = _load(run_dir, device)
    images, _ = read_inputs(pipe, input_path, test)
    settings = pipe.sample_settings(sampler=sampler, steps=steps, eta=eta)
    total = len(images) * per_image
    done = pipe.sample(total, seed=seed, init_images=repeat(images, per_image), strength=strength, progress=False,
                       **settings, **condition_kwargs(class_, prompt, guidance))
    parameters = {"verb": "img2img", "strength": strength,
                  **_common_parameters(run_dir, input_path, test, seed, sampler, steps, eta, class_, prompt, guidance,
                                       pipe)}
    _save([images, done], out, parameters, nrow=len(images))
    return f"{len(images)} image(s) x {per_image} at strength {strength} -> {out} (rows: input, results)"


@click.command(help="Inversion edit: DDIM-invert the input under the source class/prompt (w = 1) and regenerate it "
                    "under the target at --guidance; --null-optimisation fixes the drift at high guidance.\n\n\b\n"
                    "Example:\n  genmodels edit runs/mnist-cfg --test 8 --source-class 3 --target-class 8 "
                    "--guidance 3 --null-optimisation")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--input", "input_path", default=None, type=click.Path(path_type=Path))
@click.option("--test", default=None, type=int, help="The first N test images (with --source-class: of that class).")
@click.option("--source-class", default=None, type=int)
@click.option("--target-class", default=None, type=int)
@click.option("--source-prompt", default=None)
@click.option("--target-prompt", default=None)
@click.option("--guidance", default=3.0, show_default=True)
@click.option("--steps", default=50, show_default=True, help="DDIM steps of the inversion and the regeneration.")
@click.option("--null-optimisation", is_flag=True, help="Optimise the null condition per step (null-text inversion).")
@click.option("--inner-steps", default=10, show_default=True, help="Adam steps per sampling step for the null.")
@click.option("--lr", default=0.1, show_default=True, help="Adam's step size for the null.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", "out", default="edit.png", show_default=True)
@timed
def edit_command(run_dir, input_path, test, source_class, target_class, source_prompt, target_prompt, guidance, steps,
                 null_optimisation, inner_steps, lr, device, out):
    from .inversion import inversion_edit

    pipe = _load(run_dir, device)
    if test is not None and source_class is not None and input_path is None:
        split = test_split(pipe)
        if split.y is None:
            raise GenmodelsError("--source-class with --test needs a labelled dataset")
        images = split.x[split.y == source_class][:test]
        if not len(images):
            raise GenmodelsError(f"the test split has no images of class {source_class}")
    else:
        images, _ = read_inputs(pipe, input_path, test)
    source = {k: v for k, v in (("labels", source_class), ("prompt", source_prompt)) if v is not None}
    target = {k: v for k, v in (("labels", target_class), ("prompt", target_prompt)) if v is not None}
    result = inversion_edit(pipe, images, source=source, target=target, guidance=guidance, steps=steps,
                            null_optimisation=null_optimisation, inner_steps=inner_steps, lr=lr)
    parameters = {"verb": "edit", "run": str(run_dir), "source": source, "target": target, "guidance": guidance,
                  "steps": steps, "null_optimisation": null_optimisation, "inner_steps": inner_steps, "lr": lr,
                  "input": str(input_path) if input_path else f"test:{test}"}
    _save([images, result.reconstruction, result.edited], out, parameters, nrow=len(images))
    return (f"{len(images)} image(s): reconstruction PSNR {result.psnr.mean():.2f} dB at w = {guidance}"
            f"{' with' if null_optimisation else ' without'} null optimisation -> {out} "
            "(rows: input, reconstruction, edit)")


COMMANDS = {"inpaint": inpaint_command, "outpaint": outpaint_command, "img2img": img2img_command,
            "edit": edit_command}
