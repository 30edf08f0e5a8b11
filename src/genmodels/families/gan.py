"""The GAN family: a generator G and a discriminator D trained as two phases of the shared
trainer (D step, then G step every ``gan.n_critic`` steps), an EMA of G for sampling.

Modules: ``G`` (``model.network`` with the model options), ``D`` (``gan.discriminator``: its
``network`` and options). Channels, image size, point dimension, z_dim and the class count are
filled in from the data and the ``gan`` section, and recorded in config.json.

Conditioning follows the nets: each reads the keys of the batch's ``cond`` in its ``cond_keys``
(the labels ``y`` when built with ``num_classes``; the text when the run trains on captions,
``text.captions``: both nets get ``text_dim`` and read MiniLM's pooled sentence vector, G in its
conditional batch norms where the class GAN reads labels, D through a projection term;
``gan.cond_dropout: {text: 0.1}`` trains their learned null text, so an empty prompt draws
unconditionally). Fakes are made with the real batch's labels or captions. A text G keeps
training captions' vectors (``recalibration_text``) to re-estimate its batch norms on after
loading. Pix2Pix, whose G reads an input image instead of z, is its own family on these pieces
(``pix2pix.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..build import fill_option
from ..config import register_section
from ..errors import ConfigError
from ..images import save_grid, scatter_plot
from ..nn import build_from
from ..nn.gan import DISCRIMINATORS, GENERATORS, StyleGenerator
from ..objectives.gan import LOSSES, GANObjective, truncated_normal
from ..train.distributed import Dist
from ..train.trainer import Phase
from .base import Family, LoadedRun, PipelineBase, SampleOption, TrainContext, TrainParts, check_labels, register


@dataclass
class GANConfig:
    """The GAN family's losses and regularisers (genmodels.objectives.gan) and its discriminator."""

    loss: str = "non_saturating"  # minimax (saturating) | non_saturating | lsgan | wgan | hinge
    z_dim: int = 64
    n_critic: int = 1  # discriminator steps per generator step (WGAN-GP: 5)
    gp_weight: float = 0.0  # WGAN-GP's lambda (Gulrajani et al.: 10)
    r1_gamma: float = 0.0  # R1 penalty gamma / 2 * |grad D(real)|^2 (Mescheder et al. 2018)
    diffaugment: str = ""  # comma-separated DiffAugment policy: color,translation,cutout
    style_mixing: float = 0.0  # StyleGAN: probability of a style-mixed batch (0.9 in the paper)
    l1_weight: float = 0.0  # Pix2Pix: weight of |G(cond) - x|_1 (100 in the paper)
    d_lr_scale: float = 1.0  # the discriminator's learning rate is train.lr times this (TTUR)
    grow_images: int | None = None  # progressive growing: images per fade-in and per stable stage
    discriminator: dict = field(default_factory=lambda: {"network": "dcgan"})  # network + its options
    cond_dropout: dict = field(default_factory=dict)  # {text: 0.1}: P(a caption -> the nets' null text)

    CHOICES = {"loss": lambda: LOSSES}
    POSITIVE = ("z_dim", "n_critic", "grow_images", "d_lr_scale")

    def validate(self):
        other = sorted(set(self.cond_dropout) - {"text"})
        if other:
            raise ConfigError(f"gan.cond_dropout drops only the text (to the nets' learned null text), got {other}")
        for key, rate in self.cond_dropout.items():
            if not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise ConfigError(f"gan.cond_dropout.{key} must lie in [0, 1), got {rate!r}")


register_section("gan", GANConfig)

# what each net takes from the data: image nets their channels and size, toy nets the dimension
_IMAGE_NETS = ("dcgan", "stylegan", "unet", "patch")


def _split_discriminator(cfg) -> tuple[str, dict]:
    d = dict(cfg.gan.discriminator)
    d_kind = d.pop("network", None)
    if d_kind is None:
        raise ConfigError("gan.discriminator.network is missing; e.g. dcgan, mlp or patch")
    return d_kind, d


def fill_data_options(cfg, data_shape) -> tuple[dict, str, dict]:
    """(G options, D's network, D options) with the data's channels and size (or dimension)."""
    g, (d_kind, d) = dict(cfg.model.options), _split_discriminator(cfg)
    images = len(data_shape) == 3
    data = f"dataset '{cfg.data.name}'"
    for kind, opts, where in ((cfg.model.network, g, "model"), (d_kind, d, "gan.discriminator")):
        if (kind in _IMAGE_NETS) != images:
            need = "image" if kind in _IMAGE_NETS else "2-D point"
            raise ConfigError(f"{where} network {kind!r} needs {need} data, but dataset '{cfg.data.name}' has "
                              f"items of shape {tuple(data_shape)}")
        if images:
            fill_option(opts, "channels", data_shape[0], source=data, where=where)
            fill_option(opts, "image_size", data_shape[1], source=data, where=where)
        else:
            fill_option(opts, "dim", data_shape[0], source=data, where=where)
    return g, d_kind, d


def fill_options(cfg, data_shape, num_classes: int, text_dim: int | None = None) -> tuple[dict, dict]:
    """(G options, D options with its ``network``), the data-dependent ones filled in; a text run
    (``text_dim``: the width of its captions' pooled vectors) makes both nets text-conditional."""
    if cfg.model.network == "unet" or cfg.gan.discriminator.get("network") == "patch":
        raise ConfigError("Pix2Pix (model.network=unet, gan.discriminator.network=patch) is its own family: "
                          "set family: pix2pix (config edges2mnist-pix2pix)")
    g, d_kind, d = fill_data_options(cfg, data_shape)
    fill_option(g, "z_dim", cfg.gan.z_dim, source="gan.z_dim")
    if g.get("num_classes") == "auto":
        if not num_classes:
            raise ConfigError(f"model.num_classes=auto but dataset '{cfg.data.name}' has no labels")
        g["num_classes"] = num_classes
    if g.get("num_classes") is not None and d_kind == "dcgan":
        fill_option(d, "num_classes", g["num_classes"], source="model.num_classes", where="gan.discriminator")
    if text_dim is not None:
        if g.get("num_classes") is not None:
            raise ConfigError("a GAN is class- or text-conditional, not both: drop model.num_classes (the captions "
                              "name the class) or text.captions")
        if d_kind != "dcgan":
            raise ConfigError(f"text conditioning needs a projection discriminator: gan.discriminator.network=dcgan, "
                              f"not {d_kind!r}")
        for opts, where in ((g, "model"), (d, "gan.discriminator")):
            fill_option(opts, "text_dim", text_dim, source="text.captions (the text encoder's width)", where=where)
    return g, {"network": d_kind, **d}


def make_objective(cfg, G=None, D=None, *, takes_z=True) -> GANObjective:
    """The objective of the ``gan`` section; with the nets, it passes each the conditioning it reads."""
    g = cfg.gan
    policy = tuple(a.strip() for a in g.diffaugment.split(",") if a.strip())
    rates = {k: v for k, v in g.cond_dropout.items() if v}
    if G is not None:
        unread = sorted(k for k in rates if k not in G.cond_keys or k not in D.cond_keys)
        if unread:
            raise ConfigError(f"gan.cond_dropout drops {unread}, which the nets do not read (G reads "
                              f"{sorted(G.cond_keys) or 'nothing'}); set text.captions or drop gan.cond_dropout")
    return GANObjective(loss=g.loss, z_dim=g.z_dim, g_keys=getattr(G, "cond_keys", frozenset()),
                        d_keys=getattr(D, "cond_keys", frozenset()), takes_z=takes_z, gp_weight=g.gp_weight,
                        r1_gamma=g.r1_gamma, diffaugment=policy, style_mixing=g.style_mixing,
                        l1_weight=g.l1_weight, cond_dropout=rates)


def growth(images_seen: int, grow_images: int, n_stages: int = 3) -> tuple[int, float]:
    """ProGAN's schedule: each new level fades in over ``grow_images`` images (alpha 0 -> 1),
    then trains stable for as many; the first level starts stable."""
    k, frac = divmod(images_seen, grow_images)
    stage = min((k + 1) // 2, n_stages - 1)
    fading = k % 2 == 1 and stage == (k + 1) // 2
    return stage, (frac / grow_images if fading else 1.0)


@torch.no_grad()
def draw(G, seeds, *, z_dim, labels=None, text=None, truncation=None, psi=1.0, mix=None, crossover=None,
         device="cpu"):
    """One sample per seed from generator ``G``: z (and StyleGAN's noise maps) drawn on the CPU
    from the seed's own generator, so sample i never depends on the batch it is in. ``labels``
    or ``text`` (a text value, one row per seed: G reads its ``pooled``) is the condition.
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
    cond = {}
    if labels is not None:
        cond["y"] = torch.as_tensor(labels, device=device, dtype=torch.long)
    if text is not None:
        cond["text"] = {k: v.to(device) for k, v in text.items()}
    return G(z, cond or None, **kwargs)


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


def recalibration_inputs(G, cfg, device, *, batches=8, batch_size=256):
    """Fixed inputs for ``recalibrate_batchnorm``: z (and labels, or training captions' pooled
    vectors: the ``recalibration_text`` G keeps) from RECALIBRATION_SEED."""
    gen = torch.Generator().manual_seed(RECALIBRATION_SEED)
    num_classes = cfg.model.options.get("num_classes")
    captions = getattr(G, "recalibration_text", None)
    out = []
    for _ in range(batches):
        z = torch.randn(batch_size, cfg.gan.z_dim, generator=gen).to(device)
        if num_classes is not None:
            out.append((z, {"y": torch.randint(num_classes, (batch_size,), generator=gen).to(device)}))
        elif captions is not None:
            rows = torch.randint(len(captions), (batch_size,), generator=gen)
            out.append((z, {"text": {"pooled": captions[rows.to(captions.device)].to(device)}}))
        else:
            out.append((z,))
    return out


def remember_captions(G, table) -> None:
    """Fill G's ``recalibration_text`` with the captions of items drawn uniformly (one phrasing
    each, as training draws them) from RECALIBRATION_SEED: its batch norms are re-estimated on
    the training captions, and a loaded run needs no data for it."""
    rows = getattr(G, "recalibration_text", None)
    if rows is None:
        return
    gen = torch.Generator().manual_seed(RECALIBRATION_SEED)
    items = torch.randint(len(table.choices), (len(rows),), generator=gen).to(table.choices.device)
    rows.copy_(table.lookup(items, gen)["pooled"].to(rows))


SAMPLE_OPTIONS = (
    SampleOption("truncation", "float", None, "GAN: redraw |z| entries above this threshold (BigGAN's truncation "
                                              "trick, e.g. 0.7)"),
    SampleOption("psi", "float", None, "StyleGAN: truncation in w, w_avg + psi (w - w_avg)"),
    SampleOption("style_mix", "pair", None, "StyleGAN: A,B draws a strip from seed A to seed B, taking B's styles "
                                            "from ever coarser layers", flag="--mix"),
)


class GANFamily(Family):
    name = "gan"
    frozen_sections = ("gan",)
    sample_options = SAMPLE_OPTIONS

    def network_options(self, cfg, dataset) -> dict:
        """G's options; D's are filled into ``cfg.gan.discriminator`` (both land in config.json)."""
        text_dim = None
        if dataset.text is not None:  # a text run: the captions' pooled vectors set the nets' text width
            if "pooled" not in dataset.text.values:
                raise ConfigError(f"the GAN nets read the frozen MiniLM's pooled sentence vector; set "
                                  f"text.encoder=minilm (not {cfg.text.encoder!r})")
            text_dim = int(dataset.text.values["pooled"].shape[-1])
        g, d = fill_options(cfg, dataset.shape, dataset.num_classes, text_dim)
        cfg.gan.discriminator = d
        return g

    def build(self, cfg, options: dict) -> dict:
        d_kind, d_options = _split_discriminator(cfg)
        make_objective(cfg)  # a bad gan section fails before any weights are drawn
        return {"G": build_from(GENERATORS, cfg.model.network, options, what="model.network"),
                "D": build_from(DISCRIMINATORS, d_kind, d_options, what="gan.discriminator.network")}

    def objective(self, cfg, G, D) -> GANObjective:
        return make_objective(cfg, G, D)

    def training(self, ctx: TrainContext) -> TrainParts:
        cfg, t, g = ctx.cfg, ctx.cfg.train, ctx.cfg.gan
        G, D = ctx.modules["G"], ctx.modules["D"]
        if ctx.dataset.text is not None:
            remember_captions(G, ctx.dataset.text)  # before the EMA copies G
        objective = self.objective(cfg, G, D)
        G_train, D_train = ctx.wrap(G), ctx.wrap(D)
        reads = objective.g_keys | objective.d_keys
        progressive = getattr(G, "progressive", False) and g.grow_images
        if g.grow_images and not (progressive and getattr(D, "progressive", False)):
            raise ConfigError("gan.grow_images needs progressive=true on both nets (model.progressive, "
                              "gan.discriminator.progressive)")

        def d_step(batch, generator):
            b = ctx.to_device(batch, cond_keys=reads)
            if progressive:  # the trainer's images seen: a resumed run grows on schedule
                stage, alpha = growth(ctx.images_seen(), g.grow_images)
                for m in (G, D):
                    m.set_growth(stage, alpha)
            with ctx.autocast_context():
                return objective.d_loss(G, D_train, b, generator=generator)

        def g_step(batch, generator):
            b = ctx.to_device(batch, cond_keys=reads)
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
        if not (ctx.cfg.train.eval_every_images and ctx.dist.is_main):
            return None
        from ..metrics.protocol import proxy_evaluator

        z_dim, table = ctx.cfg.gan.z_dim, ctx.dataset.text

        def sample(seeds, labels=None):
            text = None if table is None else table.first_captions(len(seeds))
            return draw(ema.module, seeds, z_dim=z_dim, labels=labels, text=text, device=ctx.device).float().cpu()
        return proxy_evaluator(ctx.cfg, ctx.dataset, sample, n=ctx.cfg.train.eval_n)

    def _preview(self, ctx, ema):
        dataset, cfg = ctx.dataset, ctx.cfg
        draw_from = ema.module  # its batch-norm statistics are recalibrated before each preview
        inputs = recalibration_inputs(draw_from, cfg, ctx.device)
        recalibrate = lambda: recalibrate_batchnorm(draw_from, inputs)  # noqa: E731
        num_classes = cfg.model.options.get("num_classes")
        text = None if dataset.text is None else dataset.text.first_captions(16)

        def preview(png_path):
            recalibrate()
            if dataset.kind == "image":
                labels = [i // 2 % num_classes for i in range(16)] if num_classes else None
                x = draw(ema.module, range(16), z_dim=cfg.gan.z_dim, labels=labels, text=text, device=ctx.device)
                save_grid(x.float().cpu(), png_path, nrow=8, scale=2)
            else:
                x = draw(ema.module, range(2000), z_dim=cfg.gan.z_dim, device=ctx.device)
                scatter_plot(x.float().cpu(), png_path, reference=dataset.x[:2000])
        return preview

    def load(self, run: LoadedRun):
        G = run.modules["G"]
        recalibrate_batchnorm(G, recalibration_inputs(G, run.config, run.device))
        return GANPipeline(run.run_dir, run.config, G, run.data_shape, run.class_names, run.device)


@dataclass
class GANPipeline(PipelineBase):
    """A trained GAN: ``sample(n, seed=)`` from G (EMA weights by default)."""

    run_dir: Path
    config: object
    net: torch.nn.Module
    data_shape: tuple
    class_names: tuple
    device: torch.device
    family_name = "GAN"

    @property
    def net_num_classes(self):
        return self.config.model.options.get("num_classes")

    def sample_settings(self, *, truncation=None, psi=None, **diffusion) -> dict:
        """What a sample depends on beyond the seeds (recorded by the evaluation protocol)."""
        _refuse(diffusion)
        return {"truncation": truncation, "psi": 1.0 if psi is None else psi}

    @torch.inference_mode()
    def sample(self, n=64, *, seed=0, labels=None, cond=None, prompt=None, negative_prompt=None, truncation=None,
               psi=None, mix=None, crossover=None, style_mix=None, batch_size=64, progress=False, dist: Dist = Dist(),
               **diffusion) -> torch.Tensor:
        """``n`` samples, sample i from seed ``seed + i``; ``labels`` one class for all or one per
        sample; ``prompt`` (text runs) one text for all or one per sample ("": the null text);
        ``truncation`` (BigGAN, threshold on |z|), ``psi`` (StyleGAN, in w), ``mix``:
        a seed per sample (or one for all) whose styles replace layers >= ``crossover``.
        ``style_mix=(a, b)``: instead, StyleGAN's mixing strip from seed a to seed b
        (``style_mixing``)."""
        _refuse(diffusion)
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        if negative_prompt is not None and negative_prompt.strip():
            raise ConfigError("a GAN draws in one forward pass, with no guidance to steer away from a negative "
                              "prompt; drop --negative-prompt")
        text = None
        if cond:  # a GAN's conditions are the class or the text
            unread = sorted(set(cond) - (self.net.cond_keys & {"y", "text"}))
            if unread or ("y" in cond and labels is not None) or ("text" in cond and prompt is not None):
                raise ConfigError(f"this GAN reads {sorted(self.net.cond_keys) or 'no conditioning'}, each given once "
                                  f"(labels or cond['y'], prompt or cond['text']); got cond {sorted(cond)}")
            if "y" in cond:
                labels = [int(v) for v in cond["y"]]
            if "text" in cond:
                text = {k: torch.as_tensor(v) for k, v in cond["text"].items()}
                rows = len(next(iter(text.values())))
                if rows not in (1, n):
                    raise ConfigError(f"cond['text'] needs {n} rows (one per sample) or 1, got {rows}")
                text = {k: v.expand(n, *v.shape[1:]) for k, v in text.items()}
        if style_mix is not None:
            if cond:
                raise ConfigError(f"a style-mixing strip takes a prompt, not cond {sorted(cond)}")
            return self.style_mixing(*style_mix, truncation=truncation, psi=psi, prompt=prompt)
        if prompt is not None:
            text = self.text_conditioning(self.net, n, prompt)[0]["text"]
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
            text=None if text is None else {k: v[sl] for k, v in text.items()},
            truncation=truncation, psi=1.0 if psi is None else psi, mix=None if mix is None else mix[sl],
            crossover=crossover, device=self.device).float().cpu())
        return x.clamp(-1, 1) if len(self.data_shape) == 3 else x

    def style_mixing(self, a: int, b: int, *, truncation=None, psi=None, prompt=None, **diffusion) -> torch.Tensor:
        """StyleGAN (Karras et al. 2019, Fig. 3): seed ``a``'s image, then ``a``'s coarse styles
        with ``b``'s from ever earlier layers on, ending in seed ``b``'s image: [L + 1, C, H, W]
        (all of one ``prompt`` in a text run)."""
        if not isinstance(self.net, StyleGenerator):
            raise ConfigError(f"style mixing needs a StyleGAN run (model.network=stylegan); '{self.run_dir}' "
                              f"has model.network={self.config.model.network}")
        one = dict(truncation=truncation, psi=psi, prompt=prompt, **diffusion)
        mixes = [self.sample(1, seed=a, mix=b, crossover=k, **one) for k in range(len(self.net.layers) - 1, 0, -1)]
        return torch.cat([self.sample(1, seed=a, **one), *mixes, self.sample(1, seed=b, **one)])


def _refuse(options: dict) -> None:
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise ConfigError(f"a GAN draws in one forward pass: {', '.join(given)} do not apply (they are "
                          "diffusion sampling options); GANs take truncation, psi and mix")


register(GANFamily())
