"""The ``genmodels`` command line. Every user error ends in one ``error: ...`` line and a
non-zero exit code, never a traceback."""

import sys
import time
from pathlib import Path

import click

from .errors import GenmodelsError

EXAMPLES = {
    "train": "genmodels train mnist-ddpm train.lr=1e-3 --out runs/mnist\n"
             "  genmodels train --resume --out runs/mnist train.images=600000\n"
             "  torchrun --standalone --nproc_per_node=2 -m genmodels train mnist-ddpm --out runs/ddp",
    "sample": "genmodels sample runs/mnist --n 64 --sampler ddim --steps 50 --seed 0 --out grid.png\n"
              "  genmodels sample runs/cond --class 7 --guidance 3.0 --sampler dpmpp_2m --steps 10\n"
              "  genmodels sample runs/cond --class all --guidance 3 --out classes.png  (a row per class)\n"
              "  genmodels sample runs/mnist --n 5000 --out samples.npz   (uint8 [N,H,W,C])\n"
              "  genmodels sample runs/mnist --n 16 --out pngs/           (one PNG per sample)\n"
              "  genmodels sample runs/cgan --class 7 --truncation 0.7    (GAN: BigGAN truncation of z)\n"
              "  genmodels sample runs/stylegan --psi 0.7 --mix 3,8       (StyleGAN: truncation in w, mixing)",
    "show": "genmodels data show mnist --out mnist.png\n  genmodels data show 8gaussians --out toy.png",
    "demo": "genmodels demo --minutes 10 --out runs/demo",
    "reflow": "genmodels reflow runs/flow --pairs 20000 --out runs/flow2 train.images=300000\n"
              "  genmodels reflow runs/flow2 --distill --out runs/flow2-1step",
    "invert": "genmodels invert runs/mnist --n 8 --steps 50 --out inversion.png",
    "translate": "genmodels translate runs/pix2pix --input edges.png --out digit.png\n"
                 "  genmodels translate runs/pix2pix --input digit.png --edges --out redrawn.png",
    "report": "genmodels report runs/mnist",
    "interpolate": "genmodels interpolate runs/vae --a test:0 --b test:1 --steps 10 --out interp.png\n"
                   "  genmodels interpolate runs/vae --a three.png --b eight.png --method linear",
    "reconstruct": "genmodels reconstruct runs/vae --n 16 --out recon.png",
}


def _help(name, text):
    # "\b" stops click from re-wrapping the example lines into one paragraph.
    return f"{text}\n\n\b\nExample:\n  {EXAMPLES[name]}"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="genmodels")
def cli():
    """Train, sample and evaluate generative image models from scratch.

    Quick start: `genmodels demo` trains a DDPM on MNIST for ten minutes and writes a report.
    """


# ---- train ----------------------------------------------------------------------------
@cli.command(help=_help("train", "Train a model from a YAML config (a path or a bundled name such "
                                 "as mnist-ddpm) with optional key.sub=value overrides."))
@click.argument("config", required=False)
@click.argument("overrides", nargs=-1)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Overrides train.device.")
def train(config, overrides, out, resume, device):
    from .config import load_config
    from .pipeline import read_run_config
    from .train import distributed
    from .train.run import train as run_train

    overrides = list(overrides)
    if config is not None and "=" in config:  # `train --resume --out R key=value`: no config given
        overrides.insert(0, config)
        config = None
    if device:
        overrides.append(f"train.device={device}")
    if config is None:
        if not resume:
            raise click.UsageError("give a CONFIG (e.g. mnist-ddpm), or --resume with --out RUN_DIR")
        from .config import apply_overrides, from_dict

        cfg = from_dict(apply_overrides(read_run_config(out)["config"], overrides))
    else:
        cfg = load_config(config, overrides)
    progress = run_train(cfg, out, resume=resume)
    if distributed.from_env().is_main:  # under torchrun every rank gets here; one line is enough
        click.echo(f"trained {progress.images_seen:,} images; run directory: {out}")


# ---- sample ---------------------------------------------------------------------------
def write_samples(x, out: str, *, nrow=None) -> str:
    """Save samples by the form of ``out``: .png grid, .npz (uint8 NHWC) or a directory/."""
    from .images import save_grid, save_images, save_npz, scatter_plot

    as_dir = out.endswith(("/", "\\"))  # a trailing slash, which Path() would drop
    out = Path(out)
    if as_dir or out.is_dir():
        save_images(x, out)
        return f"{len(x)} PNG files in {out}/"
    if out.suffix == ".npz":
        save_npz(x, out)
        return f"{len(x)} samples in {out}"
    if out.suffix == ".png":
        if x.ndim == 2:
            scatter_plot(x, out)
        else:
            save_grid(x, out, nrow=nrow, scale=2)
        return f"grid of {len(x)} samples in {out}"
    raise GenmodelsError(f"--out '{out}' must end in .png (grid), .npz (uint8 array) or / (one PNG each)")


def parse_interval(text):
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not LO,HI (two noise levels, e.g. 0.3,5)") from None
    return (min(lo, hi), max(lo, hi))


def parse_classes(text, n, per_class, pipe, classifier=None):
    """--class K -> n labels K; --class all -> per_class labels of every class, class-major."""
    if text is None:
        return None, n, None
    num_classes = pipe.net_num_classes or (classifier.net.num_classes if classifier is not None else None)
    if num_classes is None:
        raise GenmodelsError(f"'{pipe.run_dir}' is not class-conditional (model.num_classes is unset); "
                             "drop --class, or add --classifier RUN for classifier guidance")
    if text == "all":
        return [k for k in range(num_classes) for _ in range(per_class)], num_classes * per_class, per_class
    names = list(pipe.class_names)
    if text in names and not text.isdigit():
        return [names.index(text)] * n, n, None
    try:
        return [int(text)] * n, n, None
    except ValueError:
        raise GenmodelsError(f"--class '{text}' is not a class index, a class name or 'all'") from None


@cli.command(help=_help("sample", "Sample from a trained run (EMA weights)."))
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--n", "--num-samples", "n", default=64, show_default=True,
              help="Number of samples (under torchrun write --num-samples: its own parser takes --n).")
@click.option("--sampler", default=None,
              help="Diffusion runs: ddim (default) | ddpm | euler | euler_ancestral | heun | dpmpp_2m | "
                   "dpmpp_2m_sde | unipc | rk45 | euler_maruyama | pc (score-SDE predictor-corrector).")
@click.option("--steps", default=None, type=int,
              help="Sampling steps, default 50 (network evaluations; heun uses 2 per step but the last).")
@click.option("--eta", default=None, type=float, help="Ancestral noise (ddim, euler_ancestral, dpmpp_2m_sde).")
@click.option("--spacing", default=None,
              help="Noise grid: leading | trailing | linspace (timesteps) | karras | logsnr.")
@click.option("--sigma-max", default=None, type=float,
              help="Top noise level of karras/logsnr grids (EDM: 80; heun needs a cap on cosine DDPMs).")
@click.option("--class", "class_", default=None, help="Class index or name, or 'all' (a row per class).")
@click.option("--per-class", default=8, show_default=True, help="Samples per class with --class all.")
@click.option("--guidance", default=None, type=float,
              help="Classifier-free guidance scale w (1 conditional, the default; 0 unconditional).")
@click.option("--guidance-interval", default=None, help="LO,HI: guide only for sigma in [LO, HI].")
@click.option("--threshold", default=None, type=float, help="Dynamic thresholding percentile, e.g. 0.995.")
@click.option("--classifier", default=None, type=click.Path(path_type=Path),
              help="A noise-aware classifier run (config mnist-noisy-classifier) for classifier guidance.")
@click.option("--classifier-scale", default=None, type=float, help="Classifier guidance scale (default 1).")
@click.option("--churn", default=None, type=float, help="EDM s_churn for euler and heun.")
@click.option("--order", default=None, type=int, help="UniPC order (1-3).")
@click.option("--snr", default=None, type=float, help="pc: the Langevin corrector's signal-to-noise ratio (0.16).")
@click.option("--corrector-steps", default=None, type=int, help="pc: Langevin steps per noise level (1).")
@click.option("--truncation", default=None, type=float,
              help="GAN: redraw |z| entries above this threshold (BigGAN's truncation trick, e.g. 0.7).")
@click.option("--psi", default=None, type=float, help="StyleGAN: truncation in w, w_avg + psi (w - w_avg).")
@click.option("--mix", default=None,
              help="StyleGAN: A,B draws a strip from seed A to seed B, taking B's styles from ever coarser layers.")
@click.option("--seed", default=0, show_default=True, help="Sample i uses seed + i.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", "out", default="samples.png", show_default=True,
              help="grid.png, samples.npz or a directory/ for one PNG per sample.")
def sample(run_dir, n, sampler, steps, eta, spacing, sigma_max, class_, per_class, guidance, guidance_interval,
           threshold, classifier, classifier_scale, churn, order, snr, corrector_steps, truncation, psi, mix,
           seed, batch_size, weights, device, out):
    from .pipeline import load, load_classifier

    from .build import resolve_device
    from .train import distributed

    # Under torchrun each rank draws its share of the batches; rank 0 writes them all.
    dist, rank_device = distributed.setup(resolve_device(device))
    pipe = load(run_dir, device=rank_device, weights=weights)
    classifier = None if classifier is None else load_classifier(classifier, device=device)
    labels, n, nrow = parse_classes(class_, n, per_class, pipe, classifier)
    # Only the options given reach the pipeline: each family refuses the ones it has no use for.
    options = dict(sampler=sampler, steps=steps, eta=eta, spacing=spacing, sigma_max=sigma_max,
                   guidance=guidance, guidance_interval=parse_interval(guidance_interval),
                   dynamic_threshold=threshold, classifier=classifier, classifier_scale=classifier_scale,
                   s_churn=churn, order=order, snr=snr, corrector_steps=corrector_steps, truncation=truncation,
                   psi=psi)
    options = {k: v for k, v in options.items() if v is not None}
    t0 = time.perf_counter()
    if mix is not None:
        if not hasattr(pipe, "style_mixing"):
            raise GenmodelsError(f"--mix needs a StyleGAN run; '{run_dir}' is a {pipe.config.family} run")
        try:
            a, b = (int(v) for v in mix.split(","))
        except ValueError:
            raise click.BadParameter(f"'{mix}' is not A,B (two seeds, e.g. 3,8)", param_hint="--mix") from None
        x = pipe.style_mixing(a, b, **options)
        n, nrow = len(x), len(x)
    else:
        x = pipe.sample(n, seed=seed, labels=labels, batch_size=batch_size, dist=dist, **options)
    dt = time.perf_counter() - t0
    if dist.is_main:
        click.echo(f"{write_samples(x, out, nrow=nrow)} ({dt:.1f} s, {1000 * dt / n:.1f} ms per sample)")
    distributed.teardown(dist)


@cli.command(help=_help("invert", "DDIM inversion: map real test images to noise and back; saves "
                                   "a grid of rows image / noise / reconstruction and prints the error."))
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--n", default=8, show_default=True, help="Test images to invert.")
@click.option("--steps", default=50, show_default=True)
@click.option("--spacing", default=None)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", "out", default="inversion.png", show_default=True)
def invert(run_dir, n, steps, spacing, device, out):
    import torch

    from .data import load_dataset
    from .images import save_grid
    from .pipeline import load

    pipe = load(run_dir, device=device)
    data = pipe.config.data
    test = load_dataset(data.name, split="test", image_size=data.image_size, channels=data.channels)
    if test.kind == "points":
        raise GenmodelsError("invert works on image runs; this run's data are 2-D points")
    labels = test.y[:n] if pipe.net_num_classes is not None else None
    noise, recon, rmse = pipe.invert(test.x[:n], steps=steps, spacing=spacing, labels=labels)
    scale = noise.flatten(1).std(1).reshape(-1, 1, 1, 1)
    save_grid(torch.cat([test.x[:n], (noise / scale).clamp(-1, 1), recon.clamp(-1, 1)]), out, nrow=n, scale=2)
    click.echo(f"round-trip RMS error {rmse:.4f} (images in [-1, 1]) over {n} test images, {steps} steps -> {out}")


@cli.command(help=_help("translate", "Image-to-image (Pix2Pix runs): translate an input image, e.g. an "
                                       "edge map, into the target domain; with --edges the input is a "
                                       "picture whose Sobel edges are translated."))
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--input", "input_", required=True, type=click.Path(path_type=Path),
              help="An image file, a folder of images or an .npz (uint8 [N, H, W, C]).")
@click.option("--edges", is_flag=True, help="Take the Sobel edge map of the input first (as edges:SET builds).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", "out", default="translated.png", show_default=True,
              help="grid.png (rows: input, output), .npz or a directory/.")
def translate(run_dir, input_, edges, device, out):
    import torch

    from .data.datasets import sobel_edges
    from .data.folder import read_image
    from .images import load_image_set
    from .pipeline import load

    pipe = load(run_dir, device=device)
    if not hasattr(pipe, "translate"):
        raise GenmodelsError(f"'{run_dir}' is a {pipe.config.family} run; translate needs a Pix2Pix run "
                             "(config edges2mnist-pix2pix)")
    channels, size = pipe.data_shape[0], pipe.data_shape[1]
    if input_.is_file() and input_.suffix != ".npz":
        pixels = torch.from_numpy(read_image(input_, image_size=size, channels=channels).copy())
        x = pixels.reshape(size, size, channels).permute(2, 0, 1)[None].float().div(127.5).sub(1)
    else:
        x = load_image_set(input_)
    if edges:
        x = sobel_edges(x)
    y = pipe.translate(x)
    if out.endswith(".png"):
        from .images import save_grid

        save_grid(torch.cat([x, y]), out, nrow=len(x), scale=2)
        click.echo(f"{len(x)} image(s) translated; rows input / output in {out}")
    else:
        click.echo(write_samples(y, out))


@cli.command(help=_help("reflow", "Rectified flow's reflow: draw (noise, sample) pairs with a trained "
                                   "flow, train the next flow on them from its weights (or distil a "
                                   "one-step generator), and report straightness before and after."))
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="The new run directory.")
@click.option("--pairs", default=10_000, show_default=True, help="ODE pairs to draw (saved beside --out).")
@click.option("--steps", default=100, show_default=True, help="Euler steps per pair.")
@click.option("--images", default=None, type=int, help="Training images for the new run (train.images).")
@click.option("--distill", is_flag=True, help="Train a one-step generator (t = 1 only) on the pairs.")
def reflow(run_dir, overrides, out, pairs, steps, images, distill):
    from .reflow import reflow as run_reflow

    result = run_reflow(run_dir, out, pairs=pairs, steps=steps, images=images, distill=distill,
                        overrides=list(overrides))
    click.echo(f"straightness {result.straightness_before:.4f} -> {result.straightness_after:.4f} "
               f"(20-step Euler, 1,000 samples); pairs: {result.pairs_file}; run: {result.run_dir}")


# ---- VAE: the latent space ------------------------------------------------------------------
def _load_vae(run_dir, device):
    from .families.vae import VAEPipeline
    from .pipeline import load

    pipe = load(run_dir, device=device)
    if not isinstance(pipe, VAEPipeline):
        raise GenmodelsError(f"'{run_dir}' holds a {pipe.config.family} run; this command needs a VAE (family: vae)")
    return pipe


def _test_split(pipe):
    from .data import load_dataset

    data = pipe.config.data
    return load_dataset(data.name, split="test", image_size=data.image_size, channels=data.channels)


def read_image_arg(text: str, pipe, option: str):
    """--a/--b: a PNG path, or test:INDEX, an image of the run's held-out split."""
    from .errors import DataError
    from .images import load_image

    if text.startswith("test:"):
        test = _test_split(pipe)
        try:
            index = int(text[5:])
        except ValueError:
            raise DataError(f"{option} '{text}': INDEX after 'test:' must be an integer") from None
        if not 0 <= index < len(test.x):
            raise DataError(f"{option} '{text}': the {pipe.config.data.name} test split has images 0..{len(test.x) - 1}")
        return test.x[index:index + 1]
    x = load_image(text, channels=pipe.data_shape[0])
    if tuple(x.shape[1:]) != tuple(pipe.data_shape):
        c, h, w = pipe.data_shape
        raise DataError(f"{option} '{text}' is {x.shape[3]}x{x.shape[2]} pixels but this VAE takes "
                        f"{w}x{h}; resize it to {w}x{h}")
    return x


@cli.command(help=_help("interpolate", "Decode the path between two images' latents (posterior means) "
                                        "of a VAE run: a PNG strip, one row per method."))
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--a", "a", required=True, help="First image: a PNG path, or test:INDEX (the run's test split).")
@click.option("--b", "b", required=True, help="Second image, the same forms.")
@click.option("--steps", default=10, show_default=True, help="Images along the path, endpoints included.")
@click.option("--method", type=click.Choice(["slerp", "linear", "both"]), default="both", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", "out", default="interpolation.png", show_default=True)
def interpolate(run_dir, a, b, steps, method, device, out):
    import torch

    from .images import save_grid

    pipe = _load_vae(run_dir, device)
    xa, xb = read_image_arg(a, pipe, "--a"), read_image_arg(b, pipe, "--b")
    methods = ["linear", "slerp"] if method == "both" else [method]
    rows = [pipe.interpolate(xa, xb, steps=steps, method=m) for m in methods]
    save_grid(torch.cat(rows), out, nrow=steps, scale=2)
    click.echo(f"{' and '.join(methods)} interpolation, {steps} steps ({len(rows)} row(s)) -> {out}")


@cli.command(help=_help("reconstruct", "A VAE run's reconstructions of held-out images: rows of test "
                                        "images and their decoded posterior means."))
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--n", default=8, show_default=True, help="Test images (a row of at most 8 each).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", "out", default="reconstructions.png", show_default=True)
def reconstruct(run_dir, n, device, out):
    import torch

    from .images import save_grid

    pipe = _load_vae(run_dir, device)
    x = _test_split(pipe).x[:n]
    inputs, recon = pipe.inputs(x).cpu(), pipe.reconstruct(x)
    per_row = min(8, len(x))
    rows = [t for start in range(0, len(x), per_row) for t in (inputs[start:start + per_row], recon[start:start + per_row])]
    save_grid(torch.cat(rows), out, nrow=per_row, scale=2)
    mse = (recon - inputs).square().mean().item()
    click.echo(f"{len(x)} test images and their reconstructions (MSE {mse:.4f} in [-1, 1]) -> {out}")


# ---- data -----------------------------------------------------------------------------
@cli.group()
def data():
    """Look at datasets."""


@data.command(help=_help("show", "Save a grid (images) or scatter plot (2-D sets) of a dataset."))
@click.argument("name")
@click.option("--out", "out", default=None, type=click.Path(path_type=Path), help="Default: NAME.png")
@click.option("--n", default=64, show_default=True)
@click.option("--split", default="train", show_default=True)
@click.option("--image-size", default=None, type=int)
@click.option("--channels", default=None, type=int)
@click.option("--skip-bad", is_flag=True, help="Image folders: skip unreadable files with a warning.")
def show(name, out, n, split, image_size, channels, skip_bad):
    from .data import load_dataset
    from .images import save_grid, scatter_plot

    ds = load_dataset(name, split=split, image_size=image_size, channels=channels, skip_bad=skip_bad)
    out = out or Path(f"{name.replace(':', '_').replace('/', '_')}.png")
    if ds.kind == "points":
        scatter_plot(ds.x[: max(n, 2000)], out, title=name)
    else:
        save_grid(ds.x[:n], out, scale=2)
    labels = f", {ds.num_classes} classes" if ds.num_classes else ""
    click.echo(f"{name} ({split}): {len(ds.x):,} items of shape {tuple(ds.shape)}{labels} -> {out}")


# ---- demo and report --------------------------------------------------------------------
@cli.command(help=_help("demo", "The main job: train a DDPM on MNIST for a few minutes, sample 64 "
                                "digits with DDIM, evaluate them, and write an HTML report."))
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="Run directory (default: runs/demo, or runs/demo-N if that exists).")
@click.option("--minutes", default=10.0, show_default=True, help="Training time budget.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.argument("overrides", nargs=-1)
def demo(out, minutes, device, overrides):
    from .demo import run_demo

    report = run_demo(out=out, minutes=minutes, device=device, overrides=overrides)
    click.echo(f"report: {report}")


@cli.command(help=_help("report", "(Re)write a run's loss curve, sample grid and report.html."))
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def report(run_dir, device):
    from .demo import make_report

    click.echo(f"report: {make_report(run_dir, device=device)}")


from .cli_eval import eval_cmd  # noqa: E402

cli.add_command(eval_cmd)


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="genmodels", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except GenmodelsError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
