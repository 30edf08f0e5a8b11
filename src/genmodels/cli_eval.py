"""``genmodels eval``: score a run, or any two image sets, by the evaluation protocol
(genmodels.metrics.protocol, docs/EVALUATION.md). Registered on the main CLI in cli.py."""

import json
import time
from pathlib import Path

import click

from .errors import ConfigError

EVAL_HELP = """Evaluate a trained run, or compare two image sets, by the pinned protocol.

\b
Examples:
  genmodels eval runs/mnist --metrics fd_cnn,kid,prdc,nll --n 5000 --seeds 0,1,2 --json
  genmodels eval --real real/ --fake samples.npz --features mnist
  genmodels eval build-features fashion

RUN_DIR: samples n images per seed with the run's EMA weights and compares them with the
dataset's reference split in the dataset CNN's features; prints mean +- std over seeds and
appends the result to the run's metrics.jsonl.
"""


def _metrics_help(formatter) -> None:
    """The metric registry as a help section: name (data kinds), what it measures."""
    from .metrics.registry import METRICS

    with formatter.section("Metrics (the registry genmodels.metrics.METRICS)"):
        formatter.write_dl([(f"{m.name} ({', '.join(m.kinds)})", m.help) for m in METRICS.values()])


class _DefaultToRun(click.Group):
    """`genmodels eval RUN_DIR ...` means `genmodels eval run RUN_DIR ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def format_epilog(self, ctx, formatter):
        _metrics_help(formatter)


@click.group("eval", cls=_DefaultToRun, help=EVAL_HELP, invoke_without_command=False)
def eval_cmd():
    pass


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    return seeds


@eval_cmd.command("run", help="Evaluate RUN_DIR (the default: `genmodels eval RUN_DIR` runs this), "
                              "or --real/--fake image sets (folders of PNGs, or .npz of uint8 [N,H,W,C]).")
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--metrics", "metrics", default=None,
              help="Comma-separated names of the metric registry (genmodels eval --help lists them); default "
                   "fd_cnn,kid,prdc,cs (+cacc if conditional); toy: w1,w2,mmd,modes,loglik.")
@click.option("--n", default=5000, show_default=True, help="Samples per seed.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Sample i of seed s uses seed s*1e6 + i.")
@click.option("--real", type=click.Path(path_type=Path), default=None, help="Real images: folder or .npz.")
@click.option("--fake", type=click.Path(path_type=Path), default=None, help="Generated images: folder or .npz.")
@click.option("--features", default=None,
              help="mnist | fashion | digits | FILE (.safetensors feature CNN or TorchScript).")
@click.option("--convert", is_flag=True, help="--real/--fake: convert images of another shape than the "
                                               "feature network's (resize, RGB <-> gray); refused otherwise.")
@click.option("--sampler", default=None, help="Default: the run's sample.sampler.")
@click.option("--steps", default=None, type=int, help="Default: the run's sample.steps.")
@click.option("--eta", default=None, type=float)
@click.option("--guidance", default=None, type=float, help="Classifier-free guidance scale (default 1).")
@click.option("--prompts", "prompts", type=click.Choice(["train", "heldout", "combinations"]), default="train",
              show_default=True, help="Text-to-image runs: the held-out items' captions in training phrasings, "
                                      "in held-out phrasings, or the attribute combinations held out of training.")
@click.option("--prompt-style", default=None, help="Caption style of the prompts (default: the run's own).")
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True)
@click.option("--nll-n", default=64, show_default=True, help="Held-out images for nll.")
@click.option("--nll-steps", default=None, type=int,
              help="DDPM bound from this many of its T steps (unbiased estimate); default all.")
@click.option("--nll-method", type=click.Choice(["auto", "vlb", "ode"]), default=None,
              help="Diffusion runs: auto (the default: the DDPM bound for discrete DDPM runs, the PF-ODE "
                   "otherwise), vlb or ode.")
@click.option("--nll-k", default=None, type=int,
              help="VAE runs: importance samples of the IWAE bound (default 1000).")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, metrics at the top level.")
@click.option("--no-log", is_flag=True, help="Do not append to the run's metrics.jsonl.")
def run(run_dir, metrics, n, seeds, real, fake, features, convert, sampler, steps, eta, guidance, prompts,
        prompt_style, weights,
        nll_n, nll_steps, nll_method, nll_k, batch_size, device, as_json, no_log):
    if (real is None) != (fake is None):
        raise ConfigError("give both --real and --fake, or a RUN_DIR")
    if real is not None:
        if run_dir is not None:
            raise ConfigError("give either a RUN_DIR or --real/--fake, not both")
        return _compare(real, fake, features, metrics, as_json, convert=convert)
    if run_dir is None:
        raise ConfigError("give a RUN_DIR, or --real DIR_OR_NPZ --fake DIR_OR_NPZ")
    if convert:
        raise ConfigError("--convert is for --real/--fake image sets; a run's own samples always get "
                          "the protocol's conversion")
    from .evaluation import evaluate_run
    from .metrics.protocol import format_table

    result = evaluate_run(run_dir, metrics=metrics, n=n, seeds=_seeds(seeds), sampler=sampler,
                          steps=steps, eta=eta, guidance=guidance, prompts=prompts, prompt_style=prompt_style,
                          features=features,
                          weights=weights, nll_n=nll_n,
                          nll_steps=nll_steps, nll_method=nll_method, nll_k=nll_k, batch_size=batch_size,
                          device=device, log=not no_log)
    if as_json:
        click.echo(json.dumps(result.as_json()))
        return
    p = result.protocol
    if "features" in p:
        click.echo(f"features: {p['features']}; reference: {p['reference']}")
    elif "reference" in p:
        click.echo(f"reference: {p['reference']}")
    how = f" ({p['sampler']}, {p['steps']} steps{', guidance ' + str(p['guidance']) if 'guidance' in p else ''})" \
        if "sampler" in p else ""
    if "prompts" in p:
        click.echo(f"prompts: {p['prompts']}")
    what = [f"{p['n']} samples per seed{how}"] if "reference" in p else []
    if "nll_n" in p:
        k = f", k = {p['nll_k']}" if "nll_k" in p else ""
        what.append(f"nll of {p['nll_n']} held-out items ({p['nll_method']}{k})")
    click.echo(f"{'; '.join(what)}; seeds {p['seeds']}, {p['weights']} weights, "
               f"{p['images_seen'] or 0:,} training images; mean +- std over seeds:")
    click.echo(format_table(result.mean, result.std))
    click.echo("times: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))


def _compare(real, fake, features, metrics, as_json, *, convert=False):
    from .images import load_image_set
    from .metrics.protocol import DEFAULT_IMAGE_METRICS, compare_images, format_table

    real_x, fake_x = load_image_set(real), load_image_set(fake)
    if features is None:
        if real_x.shape[-2:] != (8, 8):
            raise ConfigError(f"which feature network? pass --features mnist, fashion, digits, emoji or a FILE "
                              f"(images are {real_x.shape[-1]}x{real_x.shape[-2]})")
        features = "digits"
    start = time.perf_counter()
    scores = compare_images(real_x, fake_x, features=features, metrics=metrics or DEFAULT_IMAGE_METRICS,
                            convert=convert)
    if as_json:
        click.echo(json.dumps({**scores, "seconds": round(time.perf_counter() - start, 3)}))
        return
    converted = scores.pop("converted")
    if converted:
        click.echo(converted)
    click.echo(f"features: {scores.pop('features')}; {scores.pop('n_real')} real vs {scores.pop('n_fake')} fake images")
    click.echo(format_table(scores))


@eval_cmd.command("build-features", help="Train (or load) the dataset's feature CNN and print its "
                                         "test accuracy.\n\n\b\nExample:\n  genmodels eval build-features mnist")
@click.argument("dataset", type=click.Choice(["mnist", "fashion", "digits"]))
@click.option("--rebuild", is_flag=True, help="Retrain even if the cached network is valid.")
def build_features(dataset, rebuild):
    from .metrics.features import feature_cnn_path, feature_net

    start = time.perf_counter()
    net = feature_net(dataset, rebuild=rebuild)
    info = net.info
    click.echo(f"{net.name}: {100 * info['test_accuracy']:.2f} % test accuracy on {info['n_test']:,} images, "
               f"trained on {info['n_train']:,} in {info['train_seconds']} s "
               f"(data sha256 {info['data_sha256'][:12]}); {feature_cnn_path(dataset)} "
               f"({time.perf_counter() - start:.1f} s now)")
