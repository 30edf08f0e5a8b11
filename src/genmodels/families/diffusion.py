"""The diffusion family (every path and parameterization: DDPM, VP, VE, EDM, flow matching) and
the noise-aware classifier that guides it: one net, one denoising phase, one EMA; its config
section, its pipeline (``Pipeline``: sample, invert, likelihoods) and its CLI verbs.

    >>> pipe = genmodels.load("runs/demo")
    >>> images = pipe.sample(64, seed=0, sampler="ddim", steps=50)   # [-1, 1], NCHW
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import click
import torch

from .. import build
from ..cond import as_cond, check_keys, map_values, null_value, nulled, select
from ..config import register_section
from ..diffusion import PARAMETERIZATIONS, DiscreteDDPM, sigma_grid
from ..diffusion.guidance import CFGDenoiser, ClassifierGuidance, DynamicThresholding, NoisyClassifierOnVE
from ..diffusion.paths import PATHS, SCHEDULES, T_SAMPLINGS
from ..diffusion.sigmas import SIGMA_SPACINGS, TIMESTEP_SPACINGS
from ..data.masking import full_mask_cond, inpaint_reads
from ..errors import ConfigError
from ..images import save_grid, scatter_plot
from .latent import latent_space
from ..metrics.likelihood import (bits_per_dim, ddpm_vlb, dequantize, ode_log_likelihood,
                                  ode_sigma_range)
from ..objectives.couplings import COUPLINGS
from ..samplers import SAMPLERS, generate
from ..train.distributed import Dist
from ..train.trainer import Phase
from .base import Family, LoadedRun, PipelineBase, SampleOption, TrainContext, TrainParts, check_labels, register
from .loading import load, load_run


@dataclass
class DiffusionConfig:
    """The diffusion section: the path, what the net predicts, how training draws t and noise."""

    path: str = "ddpm"  # ddpm (discrete, T steps) | vp, ve (continuous SDEs) | rectified_flow (x_t = (1-t) x0 + t noise)
    schedule: str = "linear"  # ddpm beta schedule: linear | scaled_linear (sqrt(beta) linear) | cosine
    timesteps: int = 1000
    beta_start: float = 1e-4  # linear ddpm schedule
    beta_end: float = 0.02
    beta_min: float = 0.1  # continuous vp path
    beta_max: float = 20.0
    sigma_min: float = 0.01  # ve path: sigma(t) = sigma_min (sigma_max / sigma_min)^t
    sigma_max: float = 50.0  # ve path: about the largest distance between data points
    prediction: str = "eps"  # what the network predicts: eps | x0 | v | score | edm | velocity (rectified flow)
    sigma_data: float = 0.5  # edm preconditioning: the data's standard deviation
    # training times: uniform | logit_normal, max (rectified flow) | log_normal (vp, ve: EDM's sigma density)
    t_sampling: str = "uniform"
    p_mean: float = -1.2  # log_normal: ln sigma ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    coupling: str = "independent"  # noise-data pairing per batch: independent | ot (exact) | sinkhorn
    min_snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (Hang et al. 2023); None = plain MSE
    label_dropout: float = 0.0  # class-conditional nets: P(label -> null class), for classifier-free guidance
    # any conditioning key -> P(key -> its null) per sample, e.g. {text: 0.1}: classifier-free guidance on it
    cond_dropout: dict = field(default_factory=dict)

    CHOICES = {"path": lambda: tuple(PATHS), "schedule": lambda: SCHEDULES, "t_sampling": lambda: T_SAMPLINGS,
               "coupling": lambda: COUPLINGS, "prediction": lambda: tuple(PARAMETERIZATIONS)}
    POSITIVE = ("timesteps", "sigma_min", "sigma_max", "sigma_data", "p_std")

    def validate(self):
        check_keys(self.cond_dropout, where="diffusion.cond_dropout")
        for key, rate in {"label_dropout": self.label_dropout,
                          **{f"cond_dropout.{k}": v for k, v in self.cond_dropout.items()}}.items():
            if not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise ConfigError(f"diffusion.{key} must lie in [0, 1), got {rate!r}")


register_section("diffusion", DiffusionConfig)

SAMPLE_OPTIONS = (
    SampleOption("sampler", "choice", None, "the sampler (default: the run's sample.sampler)",
                 choices=lambda: tuple(SAMPLERS)),
    SampleOption("steps", "int", None, "sampling steps, default the run's (network evaluations; heun uses 2 "
                                       "per step but the last)"),
    SampleOption("eta", "float", None, "ancestral noise (ddim, euler_ancestral, dpmpp_2m_sde, dpmpp_3m_sde)"),
    SampleOption("spacing", "choice", None, "noise grid: timestep spacings, or noise-level ones (karras, logsnr); "
                                            "default the sampler's own (dpmpp_3m_sde: trailing, restart: karras "
                                            "from 80), else the path's", choices=TIMESTEP_SPACINGS + SIGMA_SPACINGS),
    SampleOption("sigma_max", "float", None, "top noise level of karras/logsnr grids (EDM: 80)"),
    SampleOption("guidance", "float", None, "classifier-free guidance scale w (1 conditional, the default; "
                                            "0 unconditional)"),
    SampleOption("guidance_interval", "interval", None, "LO,HI: guide only for sigma in [LO, HI]"),
    SampleOption("dynamic_threshold", "float", None, "dynamic thresholding percentile, e.g. 0.995",
                 flag="--threshold"),
    SampleOption("classifier", "path", None, "a noise-aware classifier run (config mnist-noisy-classifier) "
                                             "for classifier guidance"),
    SampleOption("classifier_scale", "float", None, "classifier guidance scale (default 1)"),
    SampleOption("s_churn", "float", None, "EDM s_churn for euler and heun", flag="--churn"),
    SampleOption("order", "int", None, "UniPC order (1-3)"),
    SampleOption("snr", "float", None, "pc: the Langevin corrector's signal-to-noise ratio (0.16)"),
    SampleOption("corrector_steps", "int", None, "pc: Langevin steps per noise level (1)"),
    SampleOption("restart_interval", "interval", None, "restart: LO,HI, the sigma interval to restart in "
                                                       "(0.06,0.30)"),
    SampleOption("restart_k", "int", None, "restart: restarts of the interval (2)"),
    SampleOption("restart_steps", "int", None, "restart: Heun steps per restart pass (2)"),
)


class DiffusionFamily(Family):
    name = "diffusion"
    frozen_sections = ("diffusion",)
    sample_options = SAMPLE_OPTIONS

    def parts(self, cfg):
        return build.diffusion_parts(cfg, cfg.model.options)

    def build(self, cfg, options: dict) -> dict:
        if cfg.diffusion.prediction == "consistency" and cfg.family != "consistency":
            raise ConfigError("diffusion.prediction=consistency is trained by family: consistency (configs toy-ct, "
                              "mnist-ct, mnist-cd), not by denoising regression")
        self.parts(cfg)  # a bad diffusion section fails before any weights are drawn
        return {"net": build.build_network(cfg.model.network, **options)}

    def objective_for(self, objective, net):
        """(objective bound to ``net``, the conditioning keys its batches need): what the net
        reads, each dropped to the net's null at its ``cond_dropout`` rate."""
        reads = getattr(net, "cond_keys", frozenset())
        unread = sorted(set(objective.cond_dropout) - reads)
        if unread:
            hint = "; for the labels set model.num_classes=auto" if "y" in unread else ""
            raise ConfigError(f"diffusion.cond_dropout / label_dropout drop {unread}, which the network does not read "
                              f"(it reads {sorted(reads) or 'no conditioning'}){hint}")
        return dataclasses.replace(objective, null=lambda key, value: null_value(net, key, value)), reads

    def training(self, ctx: TrainContext) -> TrainParts:
        net = ctx.modules["net"]
        ema = ctx.ema("net")
        return self.denoising_parts(ctx, net, ctx.adamw(net.parameters()), {"net": ema}, lambda: ema.module)

    def denoising_parts(self, ctx: TrainContext, net, optimizer, emas: dict, sampling_net) -> TrainParts:
        """The one denoising phase of ``net`` (what the objective calls; ``optimizer`` holds what
        it trains), its ``emas``, and the preview and proxy evaluation drawn from
        ``sampling_net()`` (the network with the EMA weights)."""
        cfg, t = ctx.cfg, ctx.cfg.train
        path, param, objective = self.parts(cfg)
        objective, reads = self.objective_for(objective, net)
        train_net = ctx.wrap(net)

        def loss(batch, generator):
            # "noise": reflow pairs; of the conditioning, what the net reads
            on_device = ctx.to_device(batch, [k for k in ("x", "noise") if k in batch], cond_keys=reads)
            with ctx.autocast_context():
                return objective(train_net, on_device, generator=generator)

        phase = Phase("denoiser", train_net, loss, optimizer, t.grad_clip)
        if param is None:  # a classifier draws nothing
            return TrainParts([phase], emas)
        draw = self._draw(ctx, sampling_net, path, param)
        return TrainParts([phase], emas, preview=self._preview(ctx, draw), evaluate=self._evaluate(ctx, draw))

    def sampler_options(self, cfg, path) -> dict | None:
        """Options the run's own sampler takes in the preview (None: its defaults)."""
        return None

    def sampling_grid(self, cfg, path):
        """An explicit grid for the run's own sampler (``generate(sigmas=)``); None: ``sample.steps``
        levels of the path's spacing."""
        return None

    def draw_cond(self, ctx: TrainContext, seeds) -> dict:
        """Conditioning the preview's samples ``seeds`` get beyond labels, captions and masks
        (a ControlNet: the control images of those training items)."""
        return {}

    def preview_sampling(self, ctx: TrainContext) -> dict:
        """The sampler settings of the preview and proxy evaluation (``generate``'s keywords)."""
        s = ctx.cfg.sample
        return dict(sampler=s.sampler, steps=min(s.steps, 25), eta=s.eta, spacing=s.spacing)

    def _draw(self, ctx, sampling_net, path, param):
        """draw(seeds, labels) -> samples from the current EMA weights with the preview's sampler
        (latent runs: decoded by the frozen autoencoder)."""
        space = latent_space(ctx.cfg, ctx.bases)
        captions = getattr(ctx.dataset, "text", None)

        def draw(seeds, labels=None):
            net = sampling_net()
            cond = _label_cond(labels, ctx.device) or {}
            if captions is not None:  # text runs: sample i draws training item i's first caption
                cond["text"] = captions.first_captions(len(seeds))
            # inpainting runs: the preview draws from nothing (a full mask)
            cond.update(full_mask_cond(getattr(net, "cond_keys", ()), len(seeds), ctx.dataset.shape, ctx.device))
            cond.update(self.draw_cond(ctx, seeds))
            x = generate(build.make_denoiser(net, path, param), path, shape=ctx.dataset.shape, seeds=seeds,
                         **self.preview_sampling(ctx), cond=cond or None, device=ctx.device,
                         sigmas=self.sampling_grid(ctx.cfg, path), options=self.sampler_options(ctx.cfg, path))
            return x if space is None else space.decode(x)
        return draw

    def _preview(self, ctx, draw):
        dataset = ctx.dataset

        def preview(png_path):
            if dataset.kind == "image":
                save_grid(draw(range(16)).clamp(-1, 1), png_path, nrow=8, scale=2)
            else:
                scatter_plot(draw(range(2000)), png_path, reference=dataset.x[:2000].cpu())

        return preview

    def _evaluate(self, ctx, draw):
        if not (ctx.cfg.train.eval_every_images and ctx.dist.is_main):
            return None
        from ..metrics.protocol import proxy_evaluator

        return proxy_evaluator(ctx.cfg, ctx.dataset, draw, n=ctx.cfg.train.eval_n)

    def load(self, run: LoadedRun) -> Pipeline:
        path, param, _ = self.parts(run.config)
        return Pipeline(run.run_dir, run.config, run.modules["net"], path, param, run.data_shape,
                        run.class_names, run.device, latent=latent_space(run.config, run.bases))

    def verbs(self) -> list:
        return [invert, reflow]  # the CLI commands defined below


def _label_cond(labels, device) -> dict | None:
    return None if labels is None else {"y": torch.as_tensor(labels, device=device, dtype=torch.long)}


@dataclass
class Pipeline(PipelineBase):
    """Everything rebuilt from a run directory: config, network (EMA weights by default), path;
    for a latent diffusion run its ``latent`` space (``genmodels.families.latent.LatentSpace``): sampling
    runs on latents of ``latent_shape`` and decodes at the end, ``data_shape`` is the images'."""

    run_dir: Path
    config: object
    net: torch.nn.Module
    path: object
    param: object
    data_shape: tuple
    class_names: tuple
    device: torch.device
    latent: object = None  # LatentSpace of a latent diffusion run
    _classifiers: dict = field(default_factory=dict, init=False, repr=False)  # guiding classifiers, by run

    @property
    def latent_shape(self) -> tuple:
        """The shape the network denoises: the latent's, or the images' in pixel space."""
        return self.data_shape if self.latent is None else self.latent.shape

    @property
    def denoiser(self):
        return build.make_denoiser(self.net, self.path, self.param)

    @property
    def net_num_classes(self):
        return self.config.model.options.get("num_classes")

    def classifier(self, classifier):
        """A guiding classifier: a ``load_classifier`` result, or its run directory (loaded once)."""
        if not isinstance(classifier, (str, Path)):
            return classifier
        key = str(Path(classifier).resolve())
        if key not in self._classifiers:
            self._classifiers[key] = load_classifier(classifier, device=self.device)
        return self._classifiers[key]

    def num_classes(self, *, classifier=None, **options) -> int | None:
        """The classes of the network, or of the guiding ``classifier`` (a run or its directory)."""
        if self.net_num_classes is not None or classifier is None:
            return self.net_num_classes
        return self.classifier(classifier).net.num_classes

    @property
    def cond_keys(self) -> frozenset:
        """The conditioning keys the network reads."""
        return getattr(self.net, "cond_keys", frozenset())

    def conditioning(self, n: int, *, labels=None, cond=None, num_classes=None, reads=None) -> dict:
        """The conditioning of ``n`` samples, checked: ``labels`` as ``y``, merged with ``cond``
        (values with n rows, or one row for all), every key one the network reads (or ``reads``)
        and every class in 0..num_classes - 1 (default: the network's)."""
        cond = dict(as_cond(cond))
        check_keys(cond, where="cond")
        reads = self.cond_keys if reads is None else reads
        unread = sorted(set(cond) - set(reads))
        if unread:
            raise ConfigError(f"this model reads no {unread} (it reads {sorted(reads) or 'no conditioning'})")
        if labels is not None and "y" in cond:
            raise ConfigError("give the classes as labels or as cond['y'], not both")
        if labels is not None or "y" in cond:
            given = labels if labels is not None else [int(v) for v in torch.as_tensor(cond["y"]).reshape(-1)]
            if not isinstance(given, int) and len(given) == 1:
                given = int(given[0])  # one class for all
            num_classes = self.net_num_classes if num_classes is None else num_classes
            if num_classes is None:
                raise ConfigError("this model is not class-conditional; drop the class labels or pass a classifier")
            cond["y"] = torch.as_tensor(check_labels(given, n, num_classes), dtype=torch.long)

        def rows(value):
            value = torch.as_tensor(value)
            if len(value) == 1 and n > 1:
                return value.expand(n, *value.shape[1:])
            if len(value) != n:
                raise ConfigError(f"conditioning values need {n} rows (one per sample) or 1, got {len(value)}")
            return value

        return map_values(rows, cond)

    def sample(self, n=64, *, seed=0, sampler=None, steps=None, eta=None, spacing=None, sigma_max=None,
               labels=None, cond=None, prompt=None, negative_prompt=None, guidance=1.0, guidance_keys=None,
               guidance_interval=None,
               dynamic_threshold=None, classifier=None, classifier_scale=1.0, x_start=None, init_images=None,
               start_sigma=None, strength=None, callback=None, walk=None, sigmas=None, batch_size=64, progress=True,
               dist=Dist(), **options) -> torch.Tensor:
        """``n`` samples; sample i uses seed ``seed + i``. Images are clamped to [-1, 1]. ``sampler``,
        ``steps``, ``eta`` and ``spacing`` default to the run's (``sample_settings``).

        ``labels``: one class index for all, or one per sample (class-conditional runs); ``cond``:
        other conditioning values (``genmodels.cond``), one row per sample or one for all.
        ``prompt`` (text-to-image runs): one text for all or one per sample ("" = no text);
        ``negative_prompt``: the unconditional half of guidance reads it instead of the null text.
        ``guidance``: classifier-free guidance scale w (1 = conditional, 0 = unconditional) on
        ``guidance_keys`` (default: the class and text conditions given; other keys, e.g. a
        control image, stay in both halves); ``guidance_interval=(sigma_lo, sigma_hi)`` limits it
        to those noise levels. A network that reads ``guidance`` (a guidance-distilled run,
        ``genmodels.distill``) gets the scale as that input instead: one forward per step, not two.
        ``dynamic_threshold``: Imagen's percentile (e.g. 0.995) for
        clipping x0. ``classifier``: a ``load_classifier`` result (or its run directory) for
        classifier guidance with ``classifier_scale``; works on unconditional models too.
        ``x_start`` / ``init_images`` with ``start_sigma`` or ``strength``: start mid-way
        (``samplers.generate``); ``callback``: the per-step callback (``samplers.base``); ``walk``:
        a custom descent of the grid (``samplers.generate``: RePaint, DDRM); ``sigmas``: an
        explicit grid (descending, ending in 0) instead of ``steps`` and ``spacing``. Latent
        runs: ``init_images`` are images (encoded here), ``x_start`` and what the callback sees
        are latents; the result is decoded.
        ``dist``: split the batches over the ranks of a torchrun launch (see ``generate``).
        Other keywords go to the sampler (``s_churn``, ``order``, ``rtol``, ...).
        """
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        settings = self.sample_settings(sampler=sampler, steps=steps, eta=eta, spacing=spacing)
        sampler, steps, eta, spacing = (settings.get(k) for k in ("sampler", "steps", "eta", "spacing"))
        classifier = None if classifier is None else self.classifier(classifier)
        if classifier is None:
            cond = self.conditioning(n, labels=labels, cond=cond)
        else:  # the classes are the classifier's; an unconditional net reads no y
            cond = self.conditioning(n, labels=labels, cond=cond, num_classes=self.num_classes(classifier=classifier),
                                     reads=self.cond_keys | {"y"})
            if "y" not in cond:
                raise ConfigError("classifier guidance needs class labels: pass labels (CLI: --class K or --class all)")
        if not set(inpaint_reads(cond)):  # an inpainting model asked for no mask: plain sampling, a full one
            cond.update(full_mask_cond(self.cond_keys, n, self.latent_shape))
        negative = None
        if prompt is not None:
            if "text" in cond:
                raise ConfigError("give the text as prompt or as cond['text'], not both")
            text, negative = self.text_conditioning(self.net, n, prompt, negative_prompt)
            cond.update(text)
        elif negative_prompt is not None:
            raise ConfigError("a negative prompt needs a prompt (CLI: --prompt TEXT)")
        denoiser = self.denoiser
        if guidance != 1.0:
            keys = list(guidance_keys) if guidance_keys is not None else [k for k in ("y", "text") if k in cond]
            missing = [k for k in keys if k not in cond]
            if not keys or missing:
                raise ConfigError(f"guidance needs class labels or a prompt (or the condition to guide on"
                                  f"{': ' if missing else ''}{', '.join(missing)}): pass labels (CLI: --class K "
                                  "or --class all) or --prompt TEXT")
        if "guidance" in self.cond_keys:  # guidance-distilled: w is an input of the one network
            if guidance_interval is not None or negative is not None or guidance_keys is not None:
                raise ConfigError("this run was guidance-distilled (it takes the guidance scale as an input): "
                                  "guidance_interval, negative prompts and guidance_keys need CFG's two "
                                  "forwards; sample its teacher for them")
            if "guidance" in cond and guidance != 1.0:
                raise ConfigError("give the guidance scale as guidance or as cond['guidance'], not both")
            cond.setdefault("guidance", torch.full((n,), float(guidance)))
        elif guidance != 1.0:
            uncond = nulled(self.net, keys)
            if negative is not None:  # the negative prompt replaces the null text in the unconditional half
                def uncond(c, nulls=uncond):
                    return negative(nulls(c))
            denoiser = CFGDenoiser(denoiser, guidance, uncond, interval=guidance_interval)
        if classifier is not None:
            denoiser = ClassifierGuidance(denoiser, classifier, classifier_scale, denoiser_keys=self.cond_keys)
        if dynamic_threshold is not None:
            denoiser = DynamicThresholding(denoiser, dynamic_threshold)
        if init_images is not None and self.latent is not None:
            init_images = self.latent.encode(init_images)
        x = generate(denoiser, self.path, shape=self.latent_shape, seeds=range(seed, seed + n),
                     sampler=sampler, steps=steps, eta=eta, spacing=spacing, sigma_max=sigma_max, cond=cond,
                     batch_size=batch_size, device=self.device, progress=progress, options=options,
                     x_start=x_start, init_images=init_images, start_sigma=start_sigma, strength=strength,
                     callback=callback, walk=walk, sigmas=sigmas, dist=dist)
        if self.latent is not None:
            x = self.latent.decode(x)
        return x.clamp(-1, 1) if len(self.data_shape) == 3 else x

    @torch.inference_mode()
    def invert(self, images, *, steps=50, spacing=None, labels=None, cond=None):
        """DDIM inversion: the noise that deterministic DDIM on the same grid maps to ``images``
        ([-1, 1], NCHW); returns (noise in VE coordinates, reconstruction, RMS round-trip error).
        Latent runs invert the images' latents: the noise and the error are in latent space, the
        reconstruction is decoded."""
        from ..samplers import round_trip_error

        x0 = torch.as_tensor(images, dtype=torch.float32)
        if tuple(x0.shape[1:]) != tuple(self.data_shape):
            raise ConfigError(f"images of shape {tuple(x0.shape[1:])} do not fit this model's "
                              f"{tuple(self.data_shape)}")
        if self.latent is not None:
            x0 = self.latent.encode(x0)
        x0 = x0.to(self.device)
        sigmas = sigma_grid(self.path, steps, **({} if spacing is None else {"spacing": spacing}))
        cond = map_values(lambda v: v.to(self.device), self.conditioning(len(x0), labels=labels, cond=cond)) or None
        noise, recon, rmse = round_trip_error(self.denoiser, x0, sigmas, cond=cond)
        recon = recon.cpu() if self.latent is None else self.latent.decode(recon)
        return noise.cpu(), recon, rmse

    def sample_settings(self, *, sampler=None, steps=None, eta=None, spacing=None) -> dict:
        """The sampler settings ``sample`` gets for these overrides: the run's own otherwise. The
        run's ``sample.eta`` belongs to its own sampler: another sampler without an ``eta`` keeps
        its own default (None), or the run's eta 0 would make Euler ancestral deterministic.
        ``spacing`` (the grid) appears when given or when the run records one (a distilled run's)."""
        s = self.config.sample
        sampler = sampler or s.sampler
        if eta is None and sampler == s.sampler:
            eta = s.eta
        spacing = spacing or s.spacing
        return dict(sampler=sampler, steps=steps or s.steps, eta=eta, **({"spacing": spacing} if spacing else {}))

    # ---- likelihood ------------------------------------------------------------------------
    @property
    def nll_method_default(self) -> str:
        images = len(self.data_shape) == 3
        return "vlb" if images and isinstance(self.path, DiscreteDDPM) else "ode"

    def nll_settings(self, *, nll_method=None, nll_steps=None, nll_k=None) -> dict:
        """The likelihood settings used (recorded by the protocol): ``nll_method`` auto | vlb
        (the DDPM bound, discrete DDPM image runs) | ode (the probability-flow ODE); ``nll_steps``
        K estimates the DDPM bound from K of its T steps."""
        if nll_k is not None:
            raise ConfigError("nll_k (--nll-k) is the IWAE sample count of VAE runs; this run's nll uses "
                              "nll_steps / nll_method")
        method = nll_method or "auto"
        if method not in ("auto", "vlb", "ode"):
            raise ConfigError(f"nll method must be auto, vlb or ode, got {method!r}")
        if method == "vlb" and self.nll_method_default != "vlb":
            raise ConfigError("the variational bound needs an image model on a discrete DDPM path; use ode")
        return {"nll_method": self.nll_method_default if method == "auto" else method, "nll_steps": nll_steps}

    def nll_scores(self, x, *, cond=None, generator=None, progress=False, nll_method="vlb", nll_steps=None) -> dict:
        """Likelihood of held-out data ``x``: the DDPM bound in bits/dim (``vlb``), or the PF-ODE's
        log-density on dequantized data, as bits/dim for images and nats for points (``ode``).
        ``cond``: the items' conditioning (what the network reads of it is used)."""
        per_item = self.nll_per_item(x, cond=cond, generator=generator, progress=progress, nll_method=nll_method,
                                     nll_steps=nll_steps)
        return {k: v if k == "nll_nfe" else v.mean().item() for k, v in per_item.items()}

    def nll_per_item(self, x, *, cond=None, generator=None, progress=False, nll_method="vlb", nll_steps=None,
                     ode_tol=1e-5) -> dict:
        """``nll_scores`` before the mean over items: [N] tensors (``nll_bpd`` for images, ``nll``
        in nats for points) and ``nll_nfe`` (ode), so per-image scores (anomaly detection) and
        the reported mean come from one computation. ``ode_tol``: the ODE solver's rtol = atol."""
        if self.latent is not None:
            raise ConfigError("a latent diffusion run has no image likelihood (its density is over latents, and "
                              "the decoder has none); drop nll from --metrics")
        x = x.to(self.device)
        cond = map_values(lambda v: v.to(self.device), select(cond, self.cond_keys)) or None
        images = len(self.data_shape) == 3
        if nll_method == "vlb":
            bound = ddpm_vlb(self.denoiser, self.path, x, cond=cond, steps=nll_steps, generator=generator,
                             progress=progress)
            return {"nll_bpd": bound.bits_per_dim.cpu()}
        sigma_min, sigma_max, prior_std = ode_sigma_range(self.path)
        if images:
            x = dequantize(x, generator=generator)
        result = ode_log_likelihood(self.denoiser, x, sigma_min=sigma_min, sigma_max=sigma_max,
                                    prior_std=prior_std, cond=cond, generator=generator, progress=progress,
                                    rtol=ode_tol, atol=ode_tol)
        if images:
            return {"nll_bpd": bits_per_dim(result.log_px, x[0].numel()), "nll_nfe": result.nfe}
        return {"nll": -result.log_px, "nll_nfe": result.nfe}


class ClassifierFamily(DiffusionFamily):
    """A noise-aware classifier (for classifier guidance) on the diffusion path's noise levels."""

    name = "classifier"
    sample_options = ()

    def parts(self, cfg):
        return build.classifier_parts(cfg)

    def objective_for(self, objective, net):
        return objective, frozenset(["y"])  # the labels are its target

    def load(self, run: LoadedRun):
        raise ConfigError(f"'{run.run_dir}' holds a classifier run, not a diffusion; load it with "
                          "genmodels.load_classifier / --classifier")

    def verbs(self) -> list:
        return []


def load_classifier(run_dir, *, device="auto", weights="ema"):
    """A noise-aware classifier run (family: classifier) as ``classifier(x, sigma) -> logits`` on
    VE states, ready for ``genmodels.diffusion.guidance.ClassifierGuidance``."""
    run = load_run(run_dir, device=device, weights=weights, family="classifier", channels_last=False)
    path, _, _ = build.classifier_parts(run.config)
    return NoisyClassifierOnVE(run.modules["net"], path)


# ---- CLI verbs ---------------------------------------------------------------------------------
@click.command(help="DDIM inversion: map real test images to noise and back; saves a grid of rows image / "
                    "noise / reconstruction and prints the error.\n\n\b\nExample:\n  genmodels invert "
                    "runs/mnist --n 8 --steps 50 --out inversion.png")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--n", default=8, show_default=True, help="Test images to invert.")
@click.option("--steps", default=50, show_default=True)
@click.option("--spacing", default=None)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", "out", default="inversion.png", show_default=True)
def invert(run_dir, n, steps, spacing, device, out):
    from ..data import load_dataset
    from ..errors import GenmodelsError

    pipe = load(run_dir, device=device)
    if not isinstance(pipe, Pipeline):
        raise GenmodelsError(f"'{run_dir}' is a {pipe.config.family} run; invert needs a diffusion or flow run")
    data = pipe.config.data
    test = load_dataset(data.name, split="test", image_size=data.image_size, channels=data.channels)
    if test.kind == "points":
        raise GenmodelsError("invert works on image runs; this run's data are 2-D points")
    cond = select({k: v[:n] for k, v in test.conditions().items()}, pipe.cond_keys)
    noise, recon, rmse = pipe.invert(test.x[:n], steps=steps, spacing=spacing, cond=cond)
    scale = noise.flatten(1).std(1).reshape(-1, 1, 1, 1)
    rows = [test.x[:n], (noise / scale).clamp(-1, 1), recon.clamp(-1, 1)]
    if pipe.latent is not None:  # the noise is a latent of another shape: rows image / reconstruction
        rows.pop(1)
    save_grid(torch.cat(rows), out, nrow=n, scale=2)
    click.echo(f"round-trip RMS error {rmse:.4f} (images in [-1, 1]) over {n} test images, {steps} steps -> {out}")


@click.command(help="Rectified flow's reflow: draw (noise, sample) pairs with a trained flow, train the next "
                    "flow on them from its weights (or distil a one-step generator), and report straightness "
                    "before and after.\n\n\b\nExample:\n  genmodels reflow runs/flow --pairs 20000 --out "
                    "runs/flow2 train.images=300000\n  genmodels reflow runs/flow2 --distill --out runs/flow2-1step")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="The new run directory.")
@click.option("--pairs", default=10_000, show_default=True, help="ODE pairs to draw (saved beside --out).")
@click.option("--steps", default=100, show_default=True, help="Euler steps per pair.")
@click.option("--images", default=None, type=int, help="Training images for the new run (train.images).")
@click.option("--distill", is_flag=True, help="Train a one-step generator (t = 1 only) on the pairs.")
def reflow(run_dir, overrides, out, pairs, steps, images, distill):
    from ..reflow import reflow as run_reflow

    result = run_reflow(run_dir, out, pairs=pairs, steps=steps, images=images, distill=distill,
                        overrides=list(overrides))
    click.echo(f"straightness {result.straightness_before:.4f} -> {result.straightness_after:.4f} "
               f"(20-step Euler, 1,000 samples); pairs: {result.pairs_file}; run: {result.run_dir}")


register(DiffusionFamily())
register(ClassifierFamily())

__all__ = ["ClassifierFamily", "DiffusionConfig", "DiffusionFamily", "Pipeline", "load_classifier"]
