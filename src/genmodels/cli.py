"""The ``genmodels`` command line. Every user error ends in one ``error: ...`` line and a
non-zero exit code, never a traceback."""

import dataclasses
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
              "  genmodels sample runs/t2i --prompt 'a thick 3 leaning left' --negative-prompt thin --guidance 4\n"
              "  genmodels sample runs/t2i --prompts prompts.txt --per-prompt 8 --guidance 3  (a row per line)\n"
              "  genmodels sample runs/cgan --class 7 --truncation 0.7    (GAN: BigGAN truncation of z)\n"
              "  genmodels sample runs/mnist --lora a.safetensors:0.8 --lora b.safetensors:0.5   (LoRA adapters)\n"
              "  genmodels sample runs/stylegan --psi 0.7 --mix 3,8       (StyleGAN: truncation in w, mixing)\n"
              "  genmodels sample diffusers:hf/ddpm --sampler dpmpp_2m --steps 20   (a diffusers save_pretrained folder)",
    "show": "genmodels data show mnist --out mnist.png\n  genmodels data show 8gaussians --out toy.png",
    "demo": "genmodels demo --minutes 10 --out runs/demo",
    "report": "genmodels report runs/mnist",
    "build-kernels": "genmodels build-kernels\n"
                     "  GENMODELS_KERNELS_DIR=/opt/genmodels/ext genmodels build-kernels   (a shared location)",
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
    from .families import read_run_config
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
def parse_classes(text, n, per_class, pipe, num_classes):
    """--class K or NAME -> n labels K; --class all -> per_class labels of every class, class-major."""
    if text is None:
        return None, n, None
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


def parse_prompts(prompt, prompts_file, per_prompt, n, nrow):
    """--prompt TEXT -> (TEXT, n, nrow); --prompts FILE -> (per_prompt copies of each line,
    prompt-major; one grid row per prompt)."""
    if prompts_file is None:
        return prompt, n, nrow
    if prompt is not None:
        raise GenmodelsError("give --prompt or --prompts FILE, not both")
    try:
        lines = [line.strip() for line in Path(prompts_file).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise GenmodelsError(f"cannot read --prompts file '{prompts_file}': {e}") from None
    lines = [line for line in lines if line]
    if not lines:
        raise GenmodelsError(f"--prompts file '{prompts_file}' holds no prompts (one per line)")
    return [p for p in lines for _ in range(per_prompt)], len(lines) * per_prompt, per_prompt


def family_options(args: list[str], family) -> dict:
    """``--flag value`` pairs (or ``--flag=value``) of the family options given, parsed by the
    run's family schema; a flag of another family is named as such."""
    from .families import FAMILIES

    by_flag = {o.cli_flag: o for o in family.sample_options}
    options, i = {}, 0
    while i < len(args):
        flag, _, value = args[i].partition("=")
        if flag not in by_flag:
            owners = sorted(f.name for f in FAMILIES.values() if any(o.cli_flag == flag for o in f.sample_options))
            raise GenmodelsError(f"{flag} is a sample option of {', '.join(owners)} runs; this is a "
                                 f"{family.name} run (its options: {', '.join(by_flag) or 'none'})")
        if not value:
            if i + 1 >= len(args):
                raise GenmodelsError(f"{flag} needs a value")
            i += 1
            value = args[i]
        option = by_flag[flag]
        options[option.name] = option.parse(value)
        i += 1
    return options


class SampleCommand(click.Command):
    """``sample`` with each family's own options: they are taken out of the arguments wherever
    they stand (before or after RUN_DIR) and parsed by the run's family schema once it is loaded
    (``family_options``); its help lists them after the shared ones."""

    def parse_args(self, ctx, args):
        from .families import FAMILIES

        flags = {o.cli_flag for f in FAMILIES.values() for o in f.sample_options}
        rest, taken, i = [], [], 0
        while i < len(args):
            flag = args[i].partition("=")[0]
            if flag in flags:
                value_follows = "=" not in args[i] and i + 1 < len(args)
                taken += args[i:i + 1 + value_follows]
                i += 1 + value_follows
            else:
                rest.append(args[i])
                i += 1
        ctx.meta["family_options"] = taken
        return super().parse_args(ctx, rest)

    def format_options(self, ctx, formatter):
        from .families import FAMILIES

        super().format_options(ctx, formatter)
        for family in FAMILIES.values():
            rows = [(f"{o.cli_flag} {o.type.upper()}", o.help + (f" ({' | '.join(o.allowed())})" if o.type == "choice" else "")
                     + ("" if o.default is None else f"  [default: {o.default}]")) for o in family.sample_options]
            if rows:
                with formatter.section(f"Options of {family.name} runs"):
                    formatter.write_dl(rows)


@cli.command(cls=SampleCommand,
             help=_help("sample", "Sample from a trained run of any family (EMA weights). Beyond the options "
                                  "below, each family takes its own (listed after them)."))
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--n", "--num-samples", "n", default=64, show_default=True,
              help="Number of samples (under torchrun write --num-samples: its own parser takes --n).")
@click.option("--class", "class_", default=None, help="Class index or name, or 'all' (a row per class).")
@click.option("--per-class", default=8, show_default=True, help="Samples per class with --class all.")
@click.option("--prompt", default=None, help="Text-to-image runs: what to draw (\"\" = no text).")
@click.option("--negative-prompt", default=None, help="What guidance steers away from (instead of no text).")
@click.option("--prompts", "prompts_file", default=None, type=click.Path(path_type=Path),
              help="A text file, one prompt per line: a grid row of --per-prompt samples each.")
@click.option("--per-prompt", default=8, show_default=True, help="Samples per prompt with --prompts.")
@click.option("--seed", default=0, show_default=True, help="Sample i uses seed + i.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--lora", "lora", multiple=True, metavar="FILE[:WEIGHT]",
              help="A LoRA adapter trained on this run, merged with WEIGHT (default 1); repeatable.")
@click.option("--out", "out", default="samples.png", show_default=True,
              help="grid.png, samples.npz or a directory/ for one PNG per sample.")
@click.pass_context
def sample(ctx, run_dir, n, class_, per_class, prompt, negative_prompt, prompts_file, per_prompt, seed, batch_size,
           weights, device, lora, out):
    from .build import resolve_device
    from .families import get_family, load
    from .images import write_samples
    from .train import distributed

    # Under torchrun each rank draws its share of the batches; rank 0 writes them all.
    dist, rank_device = distributed.setup(resolve_device(device))
    pipe = load(run_dir, device=rank_device, weights=weights, lora=lora)
    options = family_options(ctx.meta["family_options"], get_family(pipe.config.family))
    labels, n, nrow = parse_classes(class_, n, per_class, pipe, pipe.num_classes(**options))
    prompt, n, nrow = parse_prompts(prompt, prompts_file, per_prompt, n, nrow)
    if prompt is not None:
        options["prompt"] = prompt
    if negative_prompt is not None:
        options["negative_prompt"] = negative_prompt
    t0 = time.perf_counter()
    x = pipe.sample(n, seed=seed, labels=labels, batch_size=batch_size, dist=dist, **options)
    dt = time.perf_counter() - t0
    if len(x) != n:  # a strip (StyleGAN's --mix): one row
        n, nrow = len(x), len(x)
    if dist.is_main:
        click.echo(f"{write_samples(x, out, nrow=nrow)} ({dt:.1f} s, {1000 * dt / n:.1f} ms per sample)")
    distributed.teardown(dist)


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
@click.option("--captions", "style", default=None,
              help="Draw each item's first caption of this style under it: descriptive | terse | names.")
def show(name, out, n, split, image_size, channels, skip_bad, style):
    from .data import load_dataset
    from .images import save_captioned_grid, save_grid, scatter_plot

    ds = load_dataset(name, split=split, image_size=image_size, channels=channels, skip_bad=skip_bad)
    out = out or Path(f"{name.replace(':', '_').replace('/', '_')}.png")
    if ds.kind == "points":
        scatter_plot(ds.x[: max(n, 2000)], out, title=name)
    elif style is not None:  # the captions a text-to-image run trains on (genmodels.data.captions)
        from .data.captions import caption_set

        sub = dataclasses.replace(ds, x=ds.x[:n], y=None if ds.y is None else ds.y[:n], captions=ds.captions[:n])
        texts = caption_set(sub, style, holdout=False).texts
        save_captioned_grid(sub.x, [t[0] for t in texts], out, scale=4 if ds.shape[-1] <= 32 else 2)
    elif ds.captions:  # a name under each image: the caption's first part ("grinning face; grinning")
        save_captioned_grid(ds.x[:n], [c.split("; ")[0] for c in ds.captions[:n]], out, scale=2)
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


# ---- build-kernels ----------------------------------------------------------------------
@cli.command("build-kernels", help=_help("build-kernels", "Compile the C++ CPU kernels (GroupNorm+SiLU, "
                                                          "output conv, upsampling interleave) once, in about a "
                                                          "minute, into $GENMODELS_KERNELS_DIR (default "
                                                          "~/.cache/genmodels/ext). Without them CPU runs use "
                                                          "PyTorch ops, about 1.1x slower; scripts/setup runs this."))
def build_kernels():
    from .nn import fused

    built = fused.library().exists()
    start = time.perf_counter()
    fused.build()
    how = f"already built in {fused.build_dir()}" if built else (
        f"built in {time.perf_counter() - start:.0f} s into {fused.build_dir()}")
    click.echo(f"fused CPU kernels: on ({how})")


from .cli_eval import eval_cmd  # noqa: E402

cli.add_command(eval_cmd)

from .edit.anomaly import anomaly_command  # noqa: E402
from .edit.cli import COMMANDS as EDIT_COMMANDS  # noqa: E402
from .edit.restore import restore_command  # noqa: E402

for _name, _command in {**EDIT_COMMANDS, "restore": restore_command, "anomaly": anomaly_command}.items():
    cli.add_command(_command, _name)


def add_family_verbs() -> None:
    """Each registered family's own commands (``invert``, ``translate``, ``interpolate``, ...)."""
    from .families import FAMILIES

    for family in FAMILIES.values():
        for command in family.verbs():
            if cli.commands.get(command.name) not in (None, command):
                raise RuntimeError(f"family {family.name} declares a command '{command.name}' that already exists")
            cli.add_command(command)


def main(argv=None):
    try:
        add_family_verbs()
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
