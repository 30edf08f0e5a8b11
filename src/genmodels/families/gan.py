"""The GAN family: a generator G and a discriminator D trained as two phases of the shared
trainer (D step, then G step every ``gan.n_critic`` steps), an EMA of G for sampling.

Modules: ``G`` (``model.network`` with the model options), ``D`` (``gan.discriminator``: its
``network`` and options). Channels, image size, point dimension, z_dim and the class count are
filled in from the data and the ``gan`` section, and recorded in config.json.

Conditioning follows the data and the nets: class-conditional when G was built with
``num_classes``; image-conditional (Pix2Pix) when the dataset carries ``cond`` images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import math

import torch

from ..build import fill_option
from ..errors import ConfigError
from ..images import save_grid, scatter_plot
from ..nn import build_from
from ..nn.gan_nets import DISCRIMINATORS, GENERATORS, StyleGenerator, UNetGenerator
from ..objectives.gan import GANObjective, truncated_normal
from ..pipeline import check_labels
from ..train.distributed import Dist
from ..train.trainer import Phase
from . import LoadedRun, TrainContext, TrainParts, register

# what each net takes from the data: image nets their channels and size, toy nets the dimension
_IMAGE_G = ("dcgan", "stylegan", "unet")
_IMAGE_D = ("dcgan", "patch")


def fill_options(cfg, data_shape, num_classes: int, has_cond: bool) -> tuple[dict, dict]:
    """(G options, D options with its ``network``), the data-dependent ones filled in."""
    g, d = dict(cfg.model.options), dict(cfg.gan.discriminator)
    d_kind = d.pop("network", None)
    if d_kind is None:
        raise ConfigError("gan.discriminator.network is missing; e.g. dcgan, mlp or patch")
    g_kind = cfg.model.network
    images = len(data_shape) == 3
    data = f"dataset '{cfg.data.name}'"
    for kind, opts, where, image_nets in ((g_kind, g, "model", _IMAGE_G), (d_kind, d, "gan.discriminator", _IMAGE_D)):
        if (kind in image_nets) != images:
            need = "image" if kind in image_nets else "2-D point"
            raise ConfigError(f"{where} network {kind!r} needs {need} data, but dataset '{cfg.data.name}' has "
                              f"items of shape {tuple(data_shape)}")
        if images:
            fill_option(opts, "channels", data_shape[0], source=data, where=where)
            fill_option(opts, "image_size", data_shape[1], source=data, where=where)
        else:
            fill_option(opts, "dim", data_shape[0], source=data, where=where)
    if g_kind == "unet":
        if not has_cond:
            raise ConfigError(f"model.network=unet (Pix2Pix) needs paired data such as edges:mnist, "
                              f"not '{cfg.data.name}'")
        fill_option(g, "in_channels", data_shape[0], source=data)
    else:
        fill_option(g, "z_dim", cfg.gan.z_dim, source="gan.z_dim")
    if (d_kind == "patch") != (g_kind == "unet"):
        raise ConfigError("Pix2Pix pairs model.network=unet with gan.discriminator.network=patch")
    if d_kind == "patch":
        fill_option(d, "cond_channels", data_shape[0], source=data, where="gan.discriminator")
    if g.get("num_classes") == "auto":
        if not num_classes:
            raise ConfigError(f"model.num_classes=auto but dataset '{cfg.data.name}' has no labels")
        g["num_classes"] = num_classes
    if g.get("num_classes") is not None and d_kind == "dcgan":
        fill_option(d, "num_classes", g["num_classes"], source="model.num_classes", where="gan.discriminator")
    return g, {"network": d_kind, **d}


def conditioning(cfg) -> str:
    if cfg.model.network == "unet":
        return "image"
    return "class" if cfg.model.options.get("num_classes") is not None else "none"


def make_objective(cfg) -> GANObjective:
    g = cfg.gan
    policy = tuple(a.strip() for a in g.diffaugment.split(",") if a.strip())
    return GANObjective(loss=g.loss, z_dim=g.z_dim, conditioning=conditioning(cfg), gp_weight=g.gp_weight,
                        r1_gamma=g.r1_gamma, diffaugment=policy, style_mixing=g.style_mixing,
                        l1_weight=g.l1_weight)


def growth(images_seen: int, grow_images: int, n_stages: int = 3) -> tuple[int, float]:
    """ProGAN's schedule: each new level fades in over ``grow_images`` images (alpha 0 -> 1),
    then trains stable for as many; the first level starts stable."""
    k, frac = divmod(images_seen, grow_images)
    stage = min((k + 1) // 2, n_stages - 1)
    fading = k % 2 == 1 and stage == (k + 1) // 2
    return stage, (frac / grow_images if fading else 1.0)


@torch.no_grad()
def draw(G, seeds, *, z_dim, labels=None, truncation=None, psi=1.0, mix=None, crossover=None, device="cpu"):
    """One sample per seed from generator ``G``: z (and StyleGAN's noise maps) drawn on the CPU
    from the seed's own generator, so sample i never depends on the batch it is in.
    ``truncation``: BigGAN's threshold on z; ``psi``: StyleGAN's truncation in w; ``mix``: seeds
    whose z gives the styles from ``crossover`` on (StyleGAN style mixing)."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    z = torch.stack([truncated_normal((z_dim,), threshold=truncation, generator=g) for g in gens]).to(device)
    kwargs = {}
    if isinstance(G, StyleGenerator):
        shapes = G.noise_shapes(1)
        kwargs["noise"] = [torch.cat([torch.randn(s, generator=g) for g in gens]).to(device) for s in shapes]
        kwargs["psi"] = psi
        if mix is not None:
            gens2 = [torch.Generator().manual_seed(int(s)) for s in mix]
            kwargs["z2"] = torch.stack([truncated_normal((z_dim,), threshold=truncation, generator=g)
                                        for g in gens2]).to(device)
            kwargs["crossover"] = crossover
    elif psi != 1.0 or mix is not None:
        raise ConfigError("psi (truncation in w) and style mixing need a StyleGAN generator (model.network=stylegan)")
    if labels is not None:
        return G(z, torch.as_tensor(labels, device=device, dtype=torch.long), **kwargs)
    return G(z, **kwargs)


RECALIBRATION_SEED = 2**31 - 1  # fixed: a run's samples do not depend on when it was loaded


@torch.no_grad()
def recalibrate_batchnorm(G, inputs) -> None:
    """Re-estimate G's batch-norm statistics from ``inputs`` (argument tuples for G).

    The EMA averages G's weights but copies the current G's running statistics, which belong to
    other weights: the averaged G then draws grey frames and smudges. As swa_utils.update_bn does
    for weight averages, the statistics are recomputed (a plain mean over the batches) for the
    weights that sample; with fixed inputs, samples stay a function of their seed."""
    norms = [m for m in G.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training, momenta = G.training, [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    G.train()
    for args in inputs:
        G(*args)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    G.train(was_training)


def recalibration_inputs(G, cfg, device, *, cond=None, batches=8, batch_size=256):
    """Fixed inputs for ``recalibrate_batchnorm``: z (and labels) from RECALIBRATION_SEED, or for
    Pix2Pix the first training inputs ``cond``."""
    if isinstance(G, UNetGenerator):
        return [(cond[i:i + batch_size].to(device),) for i in range(0, min(len(cond), batches * batch_size), batch_size)]
    gen = torch.Generator().manual_seed(RECALIBRATION_SEED)
    num_classes = cfg.model.options.get("num_classes")
    out = []
    for _ in range(batches):
        z = torch.randn(batch_size, cfg.gan.z_dim, generator=gen).to(device)
        out.append((z,) if num_classes is None else (z, torch.randint(num_classes, (batch_size,), generator=gen).to(device)))
    return out


class GANFamily:
    name = "gan"
    frozen_sections = ("gan",)

    def network_options(self, cfg, dataset) -> dict:
        """G's options; D's are filled into ``cfg.gan.discriminator`` (both land in config.json)."""
        g, d = fill_options(cfg, dataset.shape, dataset.num_classes, dataset.cond is not None)
        cfg.gan.discriminator = d
        return g

    def build(self, cfg, options: dict) -> dict:
        d_options = dict(cfg.gan.discriminator)
        d_kind = d_options.pop("network")
        make_objective(cfg)  # a bad gan section fails before any weights are drawn
        return {"G": build_from(GENERATORS, cfg.model.network, options, what="model.network"),
                "D": build_from(DISCRIMINATORS, d_kind, d_options, what="gan.discriminator.network")}

    def training(self, ctx: TrainContext) -> TrainParts:
        cfg, t, g = ctx.cfg, ctx.cfg.train, ctx.cfg.gan
        G, D = ctx.modules["G"], ctx.modules["D"]
        objective = make_objective(cfg)
        G_train, D_train = ctx.wrap(G), ctx.wrap(D)
        keys = {"none": ("x",), "class": ("x", "y"), "image": ("x", "cond")}[objective.conditioning]
        progressive = getattr(G, "progressive", False) and g.grow_images
        if g.grow_images and not (progressive and getattr(D, "progressive", False)):
            raise ConfigError("gan.grow_images needs progressive=true on both nets (model.progressive, "
                              "gan.discriminator.progressive)")

        def d_step(batch, generator):
            b = ctx.to_device(batch, keys)
            if progressive:  # the trainer's images seen: a resumed run grows on schedule
                stage, alpha = growth(ctx.images_seen(), g.grow_images)
                for m in (G, D):
                    m.set_growth(stage, alpha)
            with ctx.autocast_context():
                return objective.d_loss(G, D_train, b, generator=generator)

        def g_step(batch, generator):
            b = ctx.to_device(batch, keys)
            with ctx.autocast_context():
                return objective.g_loss(G_train, D, b, generator=generator)

        # clip at infinity when unclipped: the gradient norms are logged either way
        clip = math.inf if t.grad_clip is None else t.grad_clip
        phases = [Phase("D", D_train, d_step, ctx.adamw(D.parameters(), lr=t.lr * g.d_lr_scale), clip),
                  Phase("G", G_train, g_step, ctx.adamw(G.parameters()), clip, every=g.n_critic)]
        ema = ctx.ema("G")
        return TrainParts(phases, {"G": ema}, preview=self._preview(ctx, ema), evaluate=self._evaluate(ctx, ema))

    def _evaluate(self, ctx, ema):
        """The trainer's proxy rows (fd_cnn and KID, or W2 and MMD on toys) from G's EMA."""
        if not (ctx.cfg.train.eval_every_images and ctx.dist.is_main) or conditioning(ctx.cfg) == "image":
            return None
        from ..metrics.protocol import proxy_evaluator

        z_dim = ctx.cfg.gan.z_dim
        return proxy_evaluator(ctx.cfg, ctx.dataset, lambda seeds, labels=None: draw(
            ema.module, seeds, z_dim=z_dim, labels=labels, device=ctx.device).float().cpu(), n=ctx.cfg.train.eval_n)

    def _preview(self, ctx, ema):
        dataset, cfg = ctx.dataset, ctx.cfg
        draw_from = ema.module  # its batch-norm statistics are recalibrated before each preview
        inputs = recalibration_inputs(draw_from, cfg, ctx.device, cond=dataset.cond)
        recalibrate = lambda: recalibrate_batchnorm(draw_from, inputs)  # noqa: E731
        if conditioning(cfg) == "image":
            cond, x = dataset.cond[:8], dataset.x[:8]

            def preview(png_path):  # rows: input, output, target
                recalibrate()
                with torch.no_grad():
                    out = ema.module(cond.to(ctx.device)).cpu()
                save_grid(torch.cat([cond, out, x]), png_path, nrow=8, scale=2)
            return preview
        num_classes = cfg.model.options.get("num_classes")

        def preview(png_path):
            recalibrate()
            if dataset.kind == "image":
                labels = [i // 2 % num_classes for i in range(16)] if num_classes else None
                x = draw(ema.module, range(16), z_dim=cfg.gan.z_dim, labels=labels, device=ctx.device)
                save_grid(x.float().cpu(), png_path, nrow=8, scale=2)
            else:
                x = draw(ema.module, range(2000), z_dim=cfg.gan.z_dim, device=ctx.device)
                scatter_plot(x.float().cpu(), png_path, reference=dataset.x[:2000])
        return preview

    def load(self, run: LoadedRun):
        G, cfg = run.modules["G"], run.config
        cond = None
        if isinstance(G, UNetGenerator):
            from ..data import load_dataset

            cond = load_dataset(cfg.data.name, split="train", image_size=cfg.data.image_size,
                                channels=cfg.data.channels).cond
        recalibrate_batchnorm(G, recalibration_inputs(G, cfg, run.device, cond=cond))
        return GANPipeline(run.run_dir, run.config, run.modules["G"], run.data_shape, run.class_names, run.device)


@dataclass
class GANPipeline:
    """A trained GAN: ``sample(n, seed=)`` from G (EMA weights by default); Pix2Pix runs
    ``translate`` input images, and their ``sample`` translates the test split's inputs."""

    run_dir: Path
    config: object
    net: torch.nn.Module
    data_shape: tuple
    class_names: tuple
    device: torch.device

    @property
    def net_num_classes(self):
        return self.config.model.options.get("num_classes")

    @property
    def image_conditional(self) -> bool:
        return isinstance(self.net, UNetGenerator)

    def sample_settings(self, *, truncation=None, psi=None, **diffusion) -> dict:
        """What a sample depends on beyond the seeds (recorded by the evaluation protocol)."""
        _refuse(diffusion)
        return {"truncation": truncation, "psi": 1.0 if psi is None else psi}

    @torch.inference_mode()
    def sample(self, n=64, *, seed=0, labels=None, truncation=None, psi=None, mix=None, crossover=None,
               batch_size=64, progress=False, dist: Dist = Dist(), **diffusion) -> torch.Tensor:
        """``n`` samples, sample i from seed ``seed + i``; ``labels`` one class for all or one per
        sample; ``truncation`` (BigGAN, threshold on |z|), ``psi`` (StyleGAN, in w), ``mix``:
        a seed per sample (or one for all) whose styles replace layers >= ``crossover``."""
        _refuse(diffusion)
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        if self.image_conditional:
            return self._translate_test(n, batch_size)
        if labels is not None:
            labels = check_labels(labels, n, self.net_num_classes)
        elif self.net_num_classes is not None:
            labels = [i % self.net_num_classes for i in range(n)]  # a class-balanced draw
        if mix is not None:
            mix = [mix] * n if isinstance(mix, int) else list(mix)
            if crossover is None:
                crossover = len(self.net.layers) // 2
        seeds = list(range(seed, seed + n))
        x = dist.map_batches(n, batch_size, lambda sl: draw(
            self.net, seeds[sl], z_dim=self.config.gan.z_dim, labels=None if labels is None else labels[sl],
            truncation=truncation, psi=1.0 if psi is None else psi, mix=None if mix is None else mix[sl],
            crossover=crossover, device=self.device).float().cpu())
        return x.clamp(-1, 1) if len(self.data_shape) == 3 else x

    def style_mixing(self, a: int, b: int, *, truncation=None, psi=None, **diffusion) -> torch.Tensor:
        """StyleGAN (Karras et al. 2019, Fig. 3): seed ``a``'s image, then ``a``'s coarse styles
        with ``b``'s from ever earlier layers on, ending in seed ``b``'s image: [L + 1, C, H, W]."""
        if not isinstance(self.net, StyleGenerator):
            raise ConfigError(f"style mixing needs a StyleGAN run (model.network=stylegan); '{self.run_dir}' "
                              f"has model.network={self.config.model.network}")
        one = dict(truncation=truncation, psi=psi, **diffusion)
        mixes = [self.sample(1, seed=a, mix=b, crossover=k, **one) for k in range(len(self.net.layers) - 1, 0, -1)]
        return torch.cat([self.sample(1, seed=a, **one), *mixes, self.sample(1, seed=b, **one)])

    @torch.inference_mode()
    def translate(self, images, *, batch_size=64) -> torch.Tensor:
        """Pix2Pix: G(input) for input images [N, C, H, W] in [-1, 1] (e.g. edge maps)."""
        if not self.image_conditional:
            raise ConfigError(f"'{self.run_dir}' is not an image-to-image (Pix2Pix) run")
        x = torch.as_tensor(images, dtype=torch.float32)
        want = (self.net.in_channels, self.net.image_size, self.net.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ConfigError(f"input images have shape {tuple(x.shape[1:])}; this model takes {want}")
        outs = [self.net(x[i:i + batch_size].to(self.device)).float().cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(outs).clamp(-1, 1)

    def _translate_test(self, n, batch_size):
        from ..data import load_dataset

        data = self.config.data
        test = load_dataset(data.name, split="test", image_size=data.image_size, channels=data.channels)
        index = torch.arange(n) % len(test.cond)
        return self.translate(test.cond[index], batch_size=batch_size)


def _refuse(options: dict) -> None:
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise ConfigError(f"a GAN draws in one forward pass: {', '.join(given)} do not apply (they are "
                          "diffusion sampling options); GANs take truncation, psi and mix")


register(GANFamily())
