"""The VAE family: one module ("vae": encoder + decoder), one phase maximising the ELBO, one
EMA; and the loaded model, whose ``encode`` / ``decode`` are the seam latent diffusion uses.

    >>> vae = genmodels.load("runs/mnist-vae")
    >>> x = vae.sample(64, seed=0)                    # decoder means of z ~ N(0, I), [-1, 1]
    >>> mu, logvar = vae.encode(images); vae.decode(mu)
    >>> vae.interpolate(a, b, steps=10, method="slerp")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from ..config import register_section
from ..data import run_split
from ..errors import ConfigError, DataError
from ..images import save_grid
from ..nn import build_network
from ..objectives.vae import (LIKELIHOODS, IWAEBound, VAEObjective, active_units, bits_per_dim_of, get_likelihood,
                              iwae_bound)
from ..samplers import SeededNoise
from ..train.distributed import Dist
from ..train.trainer import Phase
from .base import Family, LoadedRun, PipelineBase, Reconstructor, SampleOption, TrainContext, TrainParts, register
from .loading import load

VAE_NETWORKS = ("vae_mlp", "vae_conv")
EVAL_BINARIZE_SEED = 0  # the fixed draw that binarizes held-out images for a stochastic Bernoulli VAE
DEFAULT_NLL_K = 1000


@dataclass
class VAEConfig:
    """The VAE family's objective (genmodels.objectives.vae); the nets are model.network
    vae_mlp | vae_conv with latent_dim, hidden, ..."""

    likelihood: str = "bernoulli"  # bernoulli (binarized pixels) | gaussian (dequantized density) | logistic | discretized_gaussian (8-bit bins)
    binarize: str = "stochastic"  # bernoulli: stochastic (fresh draw per batch, fixed draw for eval) | threshold (> 1/2)
    beta: float = 1.0  # weight of the KL term (beta-VAE); 1 = the ELBO
    kl_warmup_images: int = 0  # KL weight ramps linearly 0 -> beta over this many training images
    free_bits: float = 0.0  # nats per latent unit the KL term never asks below (0 = off)

    CHOICES = {"likelihood": lambda: tuple(LIKELIHOODS), "binarize": lambda: ("stochastic", "threshold")}

    def validate(self):
        for key in ("beta", "kl_warmup_images", "free_bits"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config field 'vae.{key}' must be >= 0, got {getattr(self, key)!r}")


register_section("vae", VAEConfig)


class VAEFamily(Family):
    name = "vae"
    frozen_sections = ("vae",)
    sample_options = (SampleOption("temperature", "float", 1.0, "VAE: the prior's std scale (< 1: cleaner, "
                                                                "less varied samples)"),)

    def verbs(self) -> list:
        return [interpolate, reconstruct]  # the CLI commands defined below

    @staticmethod
    def likelihood(cfg):
        return get_likelihood(cfg.vae.likelihood, binarize=cfg.vae.binarize)

    def build(self, cfg, options: dict) -> dict:
        if cfg.model.network not in VAE_NETWORKS:
            raise ConfigError(f"family 'vae' trains model.network={' or '.join(VAE_NETWORKS)}, not "
                              f"'{cfg.model.network}'")
        if "params_per_channel" in options:
            raise ConfigError("model.params_per_channel follows from vae.likelihood; remove it")
        per_channel = self.likelihood(cfg).params_per_channel
        return {"vae": build_network(cfg.model.network, **options, params_per_channel=per_channel)}

    def training(self, ctx: TrainContext) -> TrainParts:
        cfg = ctx.cfg
        v = cfg.vae
        likelihood = self.likelihood(cfg)
        objective = VAEObjective(likelihood, v.beta, v.kl_warmup_images, v.free_bits)
        net = ctx.modules["vae"]
        train_net = ctx.wrap(net)

        def loss(batch, generator):
            on_device = ctx.to_device(batch)
            with ctx.autocast_context():
                return objective(train_net, on_device, generator=generator, images_seen=ctx.images_seen())

        ema = ctx.ema("vae")
        phase = Phase("vae", train_net, loss, ctx.adamw(net.parameters()), cfg.train.grad_clip)
        averaged = VAEPipeline(None, cfg, ema.module, likelihood, ctx.dataset.shape, (), ctx.device)

        def preview(png_path):
            """Rows: 8 training images, their reconstructions, 16 prior samples."""
            x = ctx.dataset.x[:8]
            grid = torch.cat([averaged.inputs(x).cpu(), averaged.reconstruct(x), averaged.draw(range(16))])
            save_grid(grid, png_path, nrow=8, scale=2)

        evaluate = None
        if cfg.train.eval_every_images and ctx.dist.is_main:
            from ..metrics.protocol import proxy_evaluator

            evaluate = proxy_evaluator(cfg, ctx.dataset, lambda seeds, labels=None: averaged.draw(seeds),
                                       n=cfg.train.eval_n)
        return TrainParts([phase], {"vae": ema}, preview=preview, evaluate=evaluate)

    def load(self, run: LoadedRun) -> VAEPipeline:
        return VAEPipeline(run.run_dir, run.config, run.modules["vae"], self.likelihood(run.config),
                           run.data_shape, run.class_names, run.device)


@dataclass
class VAEPipeline(PipelineBase, Reconstructor):
    """A trained VAE: prior samples, encode / decode, reconstructions, interpolations, and the
    IWAE likelihood bound. Images are [-1, 1] NCHW; decoded images are the likelihood's means."""

    run_dir: Path | None
    config: object
    net: torch.nn.Module
    likelihood: object
    data_shape: tuple
    class_names: tuple
    device: torch.device
    nll_method = "iwae"
    net_num_classes = None  # unconditional

    @property
    def latent_dim(self) -> int:
        return self.net.latent_dim

    # ---- sampling -------------------------------------------------------------------------
    def sample_settings(self, **given) -> dict:
        """A VAE samples in one decoder pass: diffusion sampler settings do not apply."""
        named = [k for k, v in given.items() if v is not None]
        if named:
            raise ConfigError(f"a VAE samples in one decoder pass; {', '.join(named)} do(es) not apply to it")
        return {}

    @torch.inference_mode()
    def draw(self, seeds, *, temperature: float = 1.0, batch_size: int = 256) -> torch.Tensor:
        """Decoder means of z_i ~ N(0, temperature^2 I), z_i drawn from seed i alone."""
        seeds = list(seeds)
        out = []
        for start in range(0, len(seeds), batch_size):
            z = SeededNoise(seeds[start:start + batch_size], (self.latent_dim,), device=self.device)()
            out.append(self.decode(z * temperature))
        return torch.cat(out)

    def sample(self, n=64, *, seed=0, batch_size=64, progress=False, dist: Dist = Dist(), labels=None,
               cond=None, temperature=1.0, **options) -> torch.Tensor:
        """``n`` prior samples; sample i uses seed ``seed + i``. ``temperature`` scales the prior's
        std (< 1: cleaner, less varied digits). Under torchrun each rank decodes its share."""
        if options:
            raise ConfigError(f"a VAE samples in one decoder pass; {', '.join(sorted(options))} do(es) not "
                              "apply to it (those are diffusion sampler options)")
        if labels is not None or cond:
            raise ConfigError("this VAE is not conditional; drop the class labels / conditioning")
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        seeds = range(seed, seed + n)
        return dist.map_batches(n, batch_size, lambda batch: self.draw(seeds[batch], temperature=temperature))

    # ---- the latent seam ------------------------------------------------------------------
    def _check(self, x) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim == len(self.data_shape):
            x = x[None]
        if tuple(x.shape[1:]) != tuple(self.data_shape):
            raise DataError(f"images of shape {tuple(x.shape[1:])} do not fit this VAE's "
                              f"{tuple(self.data_shape)} (C, H, W)")
        return x.to(self.device)

    def inputs(self, x) -> torch.Tensor:
        """What the encoder sees for images ``x``: binarized (a fixed draw, or the threshold) for
        a Bernoulli VAE, the pixels themselves otherwise."""
        x = self._check(x)
        if self.likelihood.name == "bernoulli":
            g = torch.Generator().manual_seed(EVAL_BINARIZE_SEED)
            return self.likelihood.target(x.cpu(), generator=g).to(self.device)
        return x

    @torch.inference_mode()
    def encode(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z|x), each [N, latent_dim], for images ``x`` in [-1, 1]."""
        return self.net.encode(self.inputs(x))

    @torch.inference_mode()
    def decode(self, z) -> torch.Tensor:
        """The decoder's mean image for latents ``z`` [N, latent_dim], in [-1, 1], on the CPU."""
        z = torch.as_tensor(z, dtype=torch.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ConfigError(f"latents must have shape [N, {self.latent_dim}], got {list(z.shape)}")
        return self.likelihood.mean(self.net.decode(z.to(self.device))).float().cpu()

    def reconstruct(self, x) -> torch.Tensor:
        """decode(posterior mean of x)."""
        return self.decode(self.encode(x)[0])

    def interpolate(self, a, b, *, steps: int = 10, method: str = "slerp") -> torch.Tensor:
        """``steps`` images decoded along the path between the posterior means of images ``a``
        and ``b`` (endpoints included): ``linear`` or ``slerp`` (spherical, White 2016, which
        keeps the norm a Gaussian prior expects)."""
        if steps < 2:
            raise ConfigError(f"steps must be >= 2 (the two endpoints), got {steps}")
        za, zb = self.encode(a)[0][0], self.encode(b)[0][0]
        return self.decode(interpolate_latents(za, zb, steps=steps, method=method))

    # ---- likelihood -------------------------------------------------------------------------
    def nll_settings(self, *, nll_k=None, nll_method=None, nll_steps=None) -> dict:
        """The IWAE bound's settings: ``nll_k`` importance samples (default 1000)."""
        if nll_steps is not None or nll_method not in (None, "auto", "iwae"):
            raise ConfigError("a VAE's nll is its IWAE bound: nll_steps / nll_method do not apply (use nll_k)")
        return {"nll_method": self.nll_method, "nll_k": DEFAULT_NLL_K if nll_k is None else nll_k}

    @torch.inference_mode()
    def iwae(self, x, *, k: int = DEFAULT_NLL_K, generator=None, batch_size: int = 64,
             progress: bool = False) -> IWAEBound:
        """The IWAE_k bound of held-out images ``x`` (binarized or dequantized as the likelihood
        needs: Bernoulli by its fixed evaluation draw, Gaussian by ``generator``)."""
        from ..progress import progress_bar

        x = self._check(x)
        if self.likelihood.name == "bernoulli":
            target = self.inputs(x)
        else:
            target = self.likelihood.target(x.cpu(), generator=generator).to(self.device)
        parts = []
        for start in progress_bar(range(0, len(x), batch_size), desc=f"IWAE k={k}", disable=not progress, leave=False):
            parts.append(iwae_bound(self.net, self.likelihood, target[start:start + batch_size], k, generator=generator))
        return IWAEBound(torch.cat([p.log_px for p in parts]).cpu(), torch.cat([p.elbo for p in parts]).cpu(), k)

    def nll_per_item(self, x, *, generator=None, progress=False, nll_k=DEFAULT_NLL_K) -> dict:
        """Per-image [N] bounds in bits/dim: ``nll_bpd`` (-IWAE_k) and ``neg_elbo_bpd`` (-ELBO),
        the scores anomaly detection ranks and ``nll_scores`` averages."""
        bound = self.iwae(x, k=nll_k, generator=generator, progress=progress)
        dims = math.prod(self.data_shape)
        return {"nll_bpd": bits_per_dim_of(bound.log_px, dims, self.likelihood),
                "neg_elbo_bpd": bits_per_dim_of(bound.elbo, dims, self.likelihood),
                "nll_nats": -bound.log_px, "neg_elbo_nats": -bound.elbo}

    def nll_scores(self, x, *, cond=None, generator=None, progress=False, nll_k=DEFAULT_NLL_K,
                   nll_method="iwae") -> dict:
        """-IWAE_k and -ELBO of ``x`` in nats per image and bits per dimension, and the active
        units of the encoder over ``x`` (Burda et al. 2016)."""
        per_item = self.nll_per_item(x, generator=generator, progress=progress, nll_k=nll_k)
        units, _ = active_units(self.encode(x)[0])
        return {"nll_nats": per_item["nll_nats"].mean().item(), "nll_bpd": per_item["nll_bpd"].mean().item(),
                "neg_elbo_nats": per_item["neg_elbo_nats"].mean().item(), "active_units": units}


def interpolate_latents(za: torch.Tensor, zb: torch.Tensor, *, steps: int, method: str = "slerp") -> torch.Tensor:
    """[steps, J] latents from ``za`` to ``zb``: linear, or spherical (slerp, White 2016, on the
    directions: equal angles per step; the norm interpolated linearly, so both endpoints are
    exact and equal-norm endpoints give White's formula)."""
    t = torch.linspace(0, 1, steps, dtype=torch.float64)[:, None]
    a, b = za.double().cpu(), zb.double().cpu()
    if method == "linear":
        return ((1 - t) * a + t * b).float()
    if method != "slerp":
        raise ConfigError(f"interpolation method must be linear or slerp, got {method!r}")
    na, nb = a.norm(), b.norm()
    cos = (a @ b / (na * nb).clamp(min=1e-12)).clamp(-1, 1)
    omega = torch.arccos(cos)
    if omega < 1e-4:  # (anti-)parallel or zero: the great circle is undefined, the line is not
        return ((1 - t) * a + t * b).float()
    direction = (torch.sin((1 - t) * omega) * a / na + torch.sin(t * omega) * b / nb) / torch.sin(omega)
    return (direction * ((1 - t) * na + t * nb)).float()


# ---- CLI verbs: the latent space ----------------------------------------------------------------
_DEVICE = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)


def _load_vae(run_dir, device, *, kind=VAEPipeline, what="a VAE (family: vae)") -> VAEPipeline:
    from ..errors import GenmodelsError

    pipe = load(run_dir, device=device)
    if not isinstance(pipe, kind):
        raise GenmodelsError(f"'{run_dir}' holds a {pipe.config.family} run; this command needs {what}")
    return pipe


def read_image_arg(text: str, pipe, option: str):
    """--a/--b: a PNG path, or test:INDEX, an image of the run's held-out split."""
    from ..images import load_image

    if text.startswith("test:"):
        test = run_split(pipe.config.data)
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


@click.command(help="Decode the path between two images' latents (posterior means) of a VAE run: a PNG "
                    "strip, one row per method.\n\n\b\nExample:\n  genmodels interpolate runs/vae --a test:0 "
                    "--b test:1 --steps 10 --out interp.png\n  genmodels interpolate runs/vae --a three.png "
                    "--b eight.png --method linear")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--a", "a", required=True, help="First image: a PNG path, or test:INDEX (the run's test split).")
@click.option("--b", "b", required=True, help="Second image, the same forms.")
@click.option("--steps", default=10, show_default=True, help="Images along the path, endpoints included.")
@click.option("--method", type=click.Choice(["slerp", "linear", "both"]), default="both", show_default=True)
@_DEVICE
@click.option("--out", "out", default="interpolation.png", show_default=True)
def interpolate(run_dir, a, b, steps, method, device, out):
    pipe = _load_vae(run_dir, device)
    xa, xb = read_image_arg(a, pipe, "--a"), read_image_arg(b, pipe, "--b")
    methods = ["linear", "slerp"] if method == "both" else [method]
    rows = [pipe.interpolate(xa, xb, steps=steps, method=m) for m in methods]
    save_grid(torch.cat(rows), out, nrow=steps, scale=2)
    click.echo(f"{' and '.join(methods)} interpolation, {steps} steps ({len(rows)} row(s)) -> {out}")


@click.command(help="A VAE or autoencoder run's reconstructions of held-out images: rows of test images and "
                    "their decoded posterior means, with the PSNR.\n\n\b\nExample:\n  genmodels reconstruct "
                    "runs/vae --n 16 --out recon.png\n  genmodels reconstruct runs/emoji-ae --n 16")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--n", default=8, show_default=True, help="Test images (a row of at most 8 each).")
@_DEVICE
@click.option("--out", "out", default="reconstructions.png", show_default=True)
def reconstruct(run_dir, n, device, out):
    pipe = _load_vae(run_dir, device, kind=Reconstructor, what="a VAE or an autoencoder run")
    x = run_split(pipe.config.data).x[:n]
    inputs, recon = pipe.inputs(x).cpu(), pipe.reconstruct(x)
    per_row = min(8, len(x))
    rows = [t for start in range(0, len(x), per_row) for t in (inputs[start:start + per_row], recon[start:start + per_row])]
    save_grid(torch.cat(rows), out, nrow=per_row, scale=2)
    mse = (recon - inputs).square().mean().item()
    psnr = 10 * math.log10(4.0 / max(mse, 1e-12))  # peak-to-peak 2 in [-1, 1]
    click.echo(f"{len(x)} test images and their reconstructions (MSE {mse:.4f} in [-1, 1], PSNR {psnr:.2f} dB) "
               f"-> {out}")


register(VAEFamily())
