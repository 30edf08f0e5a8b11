"""Anomaly detection with a trained model: how much it changes an image, and how likely it finds it.

    rec = reconstruction_scores(pipe, x, strengths=(0.2, 0.4, 0.6))   # rec.scores [S, N], rec.maps [S, N, H, W]
    nll = likelihood_scores(pipe, x)                                  # {"ode_bpd": [N]} or {"neg_elbo_bpd": ..., ...}
    auroc(scores[y != 7], scores[y == 7])                             # 1 = every 7 scores above every other digit

Two kinds of score, both "larger = more anomalous":

- **reconstruction** (Wolleb et al. 2022; AnoDDPM, Wyatt et al. 2022): noise the image part of the
  way up the diffusion path (``strength`` s: the last s of the sampler's steps, SDEdit) and
  denoise it with deterministic DDIM (eta = 0), so the result is the model's projection of the
  image onto what it learned; ``repeats`` averages over that many noise draws. A model trained
  without a class pulls its images towards classes it knows, and pulls a corrupted region back
  to clean digit. The score is the mean *squared* difference over pixels: an anomaly is usually
  a few pixels changed a lot (a missing or extra stroke), which squaring weighs above the many
  small shifts every reconstruction has; the map is the per-pixel *absolute* difference averaged
  over channels (and repeats), which keeps it in image units for display. VAEs and autoencoders
  reconstruct through the posterior mean instead (no strength). Latent runs encode the images
  in ``sample`` and decode the result, so the map is in pixel space for them too.
- **likelihood**: -log p in bits/dim per image: a VAE's -ELBO and -IWAE_k bounds, a flow's or
  diffusion's probability-flow ODE density (or a discrete DDPM's variational bound). A known
  failure (Nalisnick et al. 2019): likelihood tracks image complexity, so a simple anomaly
  (few ink pixels, like a 1) can be more likely than the training data.

``complexity_bpd`` (an image's PNG length per dimension) gives the input-complexity correction of
Serra et al. 2020, score = bits/dim - complexity.
``auroc`` is the Mann-Whitney statistic written out (ties count 1/2), ``auroc_bootstrap_se``
its bootstrap standard error; ``anomaly_map_png`` draws rows input / reconstruction / map.
The CLI verb is ``genmodels anomaly`` (``anomaly_command``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from ..errors import ConfigError, DataError

DEFAULT_STRENGTHS = (0.2, 0.4, 0.6)
DEFAULT_NLL_K = 100  # IWAE samples per image: a per-image ranking needs less than the 1000 of a reported NLL


# ---- the statistic ----------------------------------------------------------------------------
def auroc(scores_normal, scores_anomalous) -> float:
    """P(score of a random anomaly > score of a random normal item) + 1/2 P(equal): the area under
    the ROC curve as the Mann-Whitney U statistic, U / (n0 n1), from mid-ranks of the pooled scores
    (so ties count 1/2, the ROC curve's diagonal segment through tied thresholds)."""
    normal = np.asarray(scores_normal, dtype=np.float64).ravel()
    anomalous = np.asarray(scores_anomalous, dtype=np.float64).ravel()
    if len(normal) == 0 or len(anomalous) == 0:
        raise DataError(f"AUROC needs normal and anomalous items; got {len(normal)} and {len(anomalous)}")
    if not (np.isfinite(normal).all() and np.isfinite(anomalous).all()):
        raise DataError("AUROC: the scores hold NaN or inf")
    ranks = _mid_ranks(np.concatenate([normal, anomalous]))
    n1 = len(anomalous)
    u = ranks[len(normal):].sum() - n1 * (n1 + 1) / 2
    return float(u / (len(normal) * n1))


def _mid_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with each run of tied values given the mean of the ranks it spans."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]  # each tie group's [start, end) in sorted order
    group_rank = (starts + 1 + ends) / 2  # the mean of ranks start + 1 .. end
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def auroc_bootstrap_se(scores_normal, scores_anomalous, *, resamples: int = 200, seed: int = 0) -> float:
    """Standard error of ``auroc`` by a stratified bootstrap (each group resampled with replacement
    at its own size, so every resample has both groups), the spread a new test set would show."""
    normal = np.asarray(scores_normal, dtype=np.float64).ravel()
    anomalous = np.asarray(scores_anomalous, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    values = [auroc(rng.choice(normal, len(normal)), rng.choice(anomalous, len(anomalous)))
              for _ in range(resamples)]
    return float(np.std(values, ddof=1))


# ---- reconstruction scores --------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Reconstruction:
    """Per strength s (``strengths[s]``; ``None`` for a VAE / autoencoder's one reconstruction):
    ``scores`` [S, N] mean squared difference, ``maps`` [S, N, H, W] mean |difference| over
    channels, ``recon`` [S, N, C, H, W] the reconstructions (averaged over repeats)."""

    strengths: tuple
    scores: object
    maps: object
    recon: object


def reconstruction_scores(pipe, x, *, strengths=DEFAULT_STRENGTHS, repeats: int = 1, seed: int = 0,
                          sampler: str = "ddim", steps: int = 50, eta: float = 0.0, labels=None,
                          batch_size: int = 64, progress: bool = False) -> Reconstruction:
    """Score images ``x`` [N, C, H, W] in [-1, 1] by how far the model moves them.

    Diffusion, flow and latent runs: ``pipe.sample(init_images=x, strength=s)`` with ``sampler``
    (deterministic DDIM by default) on a ``steps`` grid, once per repeat with seeds
    ``seed + r * N + i``, so image i's noise is its own and the same at every strength. Runs
    with an encoder and decoder (VAE, autoencoder) use ``pipe.reconstruct(x)``: one row, no strength.
    ``labels``: class-conditional runs denoise towards these classes.
    """
    import torch

    from ..families.base import Reconstructor

    x = torch.as_tensor(x, dtype=torch.float32).cpu()
    if x.ndim != 4:
        raise DataError(f"reconstruction scores take images [N, C, H, W], got shape {list(x.shape)}")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    if isinstance(pipe, Reconstructor):
        runs = {None: [_batched(pipe.reconstruct, x, batch_size)]}
        target = pipe.inputs(x).cpu()  # a Bernoulli VAE reconstructs its binarized input
    else:
        if not strengths:
            raise ConfigError("give at least one strength in (0, 1]")
        runs = {float(s): [pipe.sample(len(x), seed=seed + r * len(x), sampler=sampler, steps=steps, eta=eta,
                                       init_images=x, strength=float(s), labels=labels, batch_size=batch_size,
                                       progress=progress) for r in range(repeats)]
                for s in strengths}
        target = x
    scores, maps, recon = [], [], []
    for outs in runs.values():
        diff = torch.stack(outs).float() - target  # [R, N, C, H, W]
        scores.append(diff.square().flatten(2).mean(2).mean(0))
        maps.append(diff.abs().mean(2).mean(0))
        recon.append(torch.stack(outs).mean(0))
    return Reconstruction(tuple(runs), torch.stack(scores), torch.stack(maps), torch.stack(recon))


def _batched(fn, x, batch_size):
    import torch

    return torch.cat([fn(x[i:i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)])


# ---- likelihood scores ------------------------------------------------------------------------
def likelihood_scores(pipe, x, *, seed: int = 0, nll_k: int = DEFAULT_NLL_K, nll_method=None, nll_steps=None,
                      ode_tol: float = 1e-5, batch_size: int = 100, progress: bool = False) -> dict:
    """Per-image -log p in bits/dim, {name: [N] float64}: a VAE's ``neg_elbo_bpd`` and
    ``iwae_bpd`` (IWAE_``nll_k``), a flow's / diffusion's ``ode_bpd`` (probability-flow ODE on
    dequantized images, solver tolerance ``ode_tol``) or ``vlb_bpd`` (a discrete DDPM's bound,
    the run's default; ``nll_method`` picks). One generator from ``seed`` draws the dequantization,
    trace probes and IWAE samples. The ODE is solved ``batch_size`` images at a time (one
    adaptive solve per batch)."""
    import torch

    from ..families.vae import VAEPipeline

    x = torch.as_tensor(x, dtype=torch.float32).cpu()
    g = torch.Generator().manual_seed(seed)
    if isinstance(pipe, VAEPipeline):
        out = pipe.nll_per_item(x, generator=g, nll_k=nll_k, progress=progress)
        return {"neg_elbo_bpd": out["neg_elbo_bpd"].double(), "iwae_bpd": out["nll_bpd"].double()}
    if not hasattr(pipe, "nll_per_item"):
        raise ConfigError(f"a {pipe.config.family} run has no per-image likelihood; use --method recon")
    method = pipe.nll_settings(nll_method=nll_method)["nll_method"]
    parts = [pipe.nll_per_item(x[i:i + batch_size], generator=g, progress=progress, nll_method=method,
                               nll_steps=nll_steps, ode_tol=ode_tol)["nll_bpd"].double()
             for i in range(0, len(x), batch_size)]
    return {f"{method}_bpd": torch.cat(parts)}


def complexity_bpd(x) -> np.ndarray:
    """Each image's length as a lossless PNG (zlib level 9) in bits per dimension: the "input
    complexity" Serra et al. 2020 subtract from -log p (S = bpd - complexity), because a
    likelihood mostly measures how compressible an image is, not how typical of the training set."""
    import io

    from PIL import Image

    from ..images import to_uint8

    pixels = to_uint8(x)
    bits = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG", compress_level=9)
        bits.append(8 * len(buffer.getvalue()))
    return np.asarray(bits, dtype=np.float64) / pixels[0].size


# ---- the picture --------------------------------------------------------------------------------
def colorize(maps, *, vmax: float, cmap: str = "magma"):
    """Maps [N, H, W] >= 0 -> RGB images [N, 3, H, W] in [-1, 1] through a matplotlib colormap,
    0 -> its darkest colour and ``vmax`` (or above) -> its brightest, the same scale for all."""
    import matplotlib
    import torch

    rgba = matplotlib.colormaps[cmap](np.clip(np.asarray(maps, dtype=np.float64) / max(vmax, 1e-12), 0, 1))
    return torch.from_numpy(rgba[..., :3]).permute(0, 3, 1, 2).float() * 2 - 1


def anomaly_map_png(x, recon, maps, path, parameters: dict, *, vmax=None, cmap: str = "magma",
                    scale: int = 3) -> float:
    """Save a grid PNG with one column per image and rows input / reconstruction / map, the map
    in ``cmap`` on one scale from 0 to ``vmax`` (default: the largest value shown), so columns
    compare; ``parameters`` (plus the scale and colormap) go in the PNG's text chunk. Returns vmax."""
    import torch

    from ..images import save_with_parameters

    x, recon = torch.as_tensor(x).float(), torch.as_tensor(recon).float()
    maps = torch.as_tensor(maps).float()
    if maps.shape != (x.shape[0], *x.shape[2:]) or recon.shape != x.shape:
        raise DataError(f"anomaly map: images {list(x.shape)}, reconstructions {list(recon.shape)} and maps "
                        f"{list(maps.shape)} do not match")
    vmax = float(maps.max()) if vmax is None else float(vmax)
    rgb = [t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t for t in (x, recon.clamp(-1, 1))]
    grid = torch.cat([*rgb, colorize(maps, vmax=vmax, cmap=cmap)])
    save_with_parameters(grid, path, {**parameters, "rows": ["input", "reconstruction", "map |x - x_hat|"],
                                      "map_vmax": vmax, "colormap": cmap}, nrow=len(x), scale=scale)
    return vmax


# ---- the CLI verb -------------------------------------------------------------------------------
def _parse_strengths(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--strength '{text}': give comma-separated numbers in (0, 1], e.g. 0.3,0.5") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise ConfigError(f"--strength '{text}': every strength must lie in (0, 1]")
    return values


def _parse_methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in methods if m not in ("recon", "likelihood")]
    if not methods or bad:
        raise ConfigError(f"--method '{text}': choose recon, likelihood or recon,likelihood")
    return methods


def score_table(pipe, x, methods, *, strengths, repeats, seed, steps, nll_k, ode_tol, progress):
    """{score name: [N] scores} for the methods asked, and the Reconstruction (or None)."""
    rec, table = None, {}
    if "recon" in methods:
        rec = reconstruction_scores(pipe, x, strengths=strengths, repeats=repeats, seed=seed, steps=steps,
                                    progress=progress)
        for s, scores in zip(rec.strengths, rec.scores):
            table["recon" if s is None else f"recon@{s:g}"] = scores.double()
    if "likelihood" in methods:
        table.update(likelihood_scores(pipe, x, seed=seed, nll_k=nll_k, ode_tol=ode_tol, progress=progress))
    return table, rec


def _map_columns(labels, anomalous, per_group: int = 4) -> list[int]:
    """The first ``per_group`` normal and then ``per_group`` anomalous items (all if no labels)."""
    if anomalous is None:
        return list(range(min(2 * per_group, len(labels))))
    normal = [i for i, a in enumerate(anomalous) if not a][:per_group]
    return normal + [i for i, a in enumerate(anomalous) if a][:per_group]


@click.command("anomaly", help="Anomaly scores of a trained run: how much it changes an image when partly noised "
                               "and denoised (recon, per strength; VAEs: their reconstruction) and its likelihood in "
                               "bits/dim (likelihood). --test N scores N test images and prints the AUROC of the "
                               "anomaly class (default: the run's data.exclude_classes) against the rest; --input "
                               "scores one image. Writes rows input / reconstruction / |difference| map.\n\n\b\n"
                               "Example:\n  genmodels anomaly runs/flow --test 500 --method recon,likelihood "
                               "--strength 0.2,0.4 --out map.png\n  genmodels anomaly runs/flow --input digit.png "
                               "--out map.png")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--input", "input_path", default=None, type=click.Path(path_type=Path), help="One image to score.")
@click.option("--test", "n_test", default=None, type=int, help="Score the first N images of the run's test split.")
@click.option("--method", "method", default="recon", show_default=True, help="recon, likelihood, or both, comma-separated.")
@click.option("--strength", "strength", default="0.2,0.4,0.6", show_default=True,
              help="Noise strengths in (0, 1] for recon (diffusion and flow runs), comma-separated.")
@click.option("--anomaly-class", "anomaly_class", default=None, type=int,
              help="With --test: the class counted anomalous (default: the run's data.exclude_classes).")
@click.option("--repeats", default=1, show_default=True, help="Noise draws averaged per image and strength.")
@click.option("--steps", default=50, show_default=True, help="DDIM steps of the full grid (strength s runs s of them).")
@click.option("--seed", default=0, show_default=True)
@click.option("--nll-k", default=DEFAULT_NLL_K, show_default=True, help="VAE likelihood: IWAE importance samples.")
@click.option("--ode-tol", default=1e-5, show_default=True, help="Flow/diffusion likelihood: ODE solver rtol = atol.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", "out", default="anomaly.png", show_default=True, type=click.Path(path_type=Path))
def anomaly_command(run_dir, input_path, n_test, method, strength, anomaly_class, repeats, steps, seed, nll_k,
                    ode_tol, device, out):
    from ..families import load

    if (input_path is None) == (n_test is None):
        raise ConfigError("give --input IMAGE or --test N (one of them)")
    methods, strengths = _parse_methods(method), _parse_strengths(strength)
    pipe = load(run_dir, device=device)
    from .cli import read_inputs

    x, labels = read_inputs(pipe, input_path, n_test)
    anomalous = _anomalous(pipe, labels, anomaly_class) if n_test is not None else None
    table, rec = score_table(pipe, x, methods, strengths=strengths, repeats=repeats, seed=seed, steps=steps,
                             nll_k=nll_k, ode_tol=ode_tol, progress=False)
    if anomalous is not None:
        _echo_auroc(table, anomalous)
    else:
        for name, scores in table.items():
            click.echo(f"{name}: {float(scores.mean()):.6g}" if input_path is not None else
                       f"{name}: mean {float(scores.mean()):.6g} over {len(scores)} images")
    if rec is None:
        click.echo("no map: the likelihood has no per-pixel map (add --method recon)")
        return
    cols = _map_columns(labels if labels is not None else [0] * len(x), anomalous)
    row = len(rec.strengths) // 2  # the middle strength
    params = {"command": "anomaly", "run": str(run_dir), "strength": rec.strengths[row], "sampler": "ddim",
              "steps": steps, "repeats": repeats, "seed": seed, "score": "mean squared difference",
              "images": [str(input_path)] if input_path is not None else [f"test:{i}" for i in cols],
              **({"anomalous": [bool(anomalous[i]) for i in cols]} if anomalous is not None else {})}
    anomaly_map_png(x[cols], rec.recon[row][cols], rec.maps[row][cols], out, params)
    click.echo(f"map (strength {rec.strengths[row]}) -> {out}")


def _anomalous(pipe, labels, anomaly_class):
    """A bool per test item: in the anomaly class (given, or the run's held-out classes)."""
    import torch

    classes = [anomaly_class] if anomaly_class is not None else list(pipe.config.data.exclude_classes)
    if not classes:
        return None
    if labels is None:
        raise DataError(f"the {pipe.config.data.name} test split has no labels: no anomaly class to score")
    flags = torch.isin(labels, torch.tensor(classes)).tolist()
    if not any(flags) or all(flags):
        raise DataError(f"the test images scored have {'no' if not any(flags) else 'only'} items of class(es) "
                        f"{classes}; AUROC needs both (raise --test)")
    if anomaly_class is not None and anomaly_class not in pipe.config.data.exclude_classes:
        click.echo(f"note: class {anomaly_class} was in this run's training data (data.exclude_classes="
                   f"{pipe.config.data.exclude_classes})")
    return flags


def _echo_auroc(table, anomalous):
    flags = np.asarray(anomalous)
    click.echo(f"AUROC, anomalous vs normal ({int(flags.sum())} vs {int((~flags).sum())} images; "
               "1 = every anomaly scores higher):")
    for name, scores in table.items():
        s = np.asarray(scores)
        click.echo(f"  {name}: {auroc(s[~flags], s[flags]):.4f} +- {auroc_bootstrap_se(s[~flags], s[flags]):.4f}")
