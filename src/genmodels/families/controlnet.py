"""ControlNet runs (Zhang et al. 2023): steer a trained diffusion run with a control image,
without retraining it.

A ControlNet run is a composed run: ``model.base: RUN_DIR`` names a trained diffusion run (pixel
or latent, U-Net), frozen and hash-checked; its ``diffusion``, ``latent`` and ``text`` sections
are the base's (``prepare_config``), except the condition dropout, which is the ControlNet's own
(e.g. ``diffusion.label_dropout: 0.5``: half the items train without their class, so the net
learns the digit from the control). The run's weights are the ControlNet alone
(``genmodels.nn.controlnet``); the base is read from its run directory.

    family: controlnet
    model: {network: controlnet, base: runs/mnist-cfg}
    control: {type: edges}

Sampling (``ControlPipeline.sample``, CLI ``genmodels sample RUN ...``):

- ``control``: the control image(s): a tensor [C, H, W] / [N, C, H, W] in [-1, 1] (one for all
  samples or one per sample), a PNG path, or ``test:I`` / ``test:I-J`` (the control maps of
  those test images); without one, sample i reads test image i's control map (with class labels:
  a test image of sample i's class), so ``eval`` and ``report`` measure the controlled model. ``control_type``: the given image is a picture to
  extract this run's control from, not a control map.
- ``control_scale``: the residuals' weight (0 = the base alone, bit for bit).
- ``guess_mode``: the ControlNet sees no class or text and its residuals ramp 0.1 -> 1 with
  depth (``nn.controlnet``).
- ``controlnets``: more ControlNet runs on the same base, each with its control (``control`` a
  list, one per net, this run's first) and scale (``control_scale`` a list).
- Classifier-free guidance (``guidance``) guides the base's class / prompt; both halves see the
  control, unless ``guide_control`` (or ``guidance_keys`` naming ``image``): then the
  unconditional half reads the null control (zeros) too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import build
from ..config import from_dict
from ..data import run_split
from ..data.control import CONTROL_TYPES, control_channels, control_fidelity, extract_control
from ..errors import ConfigError
from ..images import save_grid
from ..nn.controlnet import ControlledUNet, ControlNet
from ..nn.unet import UNet
from .base import LoadedRun, SampleOption, TrainContext, TrainParts, register
from .diffusion import SAMPLE_OPTIONS, DiffusionFamily, Pipeline
from .latent import latent_space
from .loading import read_run_config

BASE_FIELD = "model.base"
REQUIRED = "required"  # what a shipped ControlNet config holds in model.base
INHERITED_SECTIONS = ("diffusion", "latent", "text")  # the base's, so the ControlNet denoises as it does
OWN_DIFFUSION_FIELDS = ("label_dropout", "cond_dropout")  # condition dropout is the ControlNet's own
FIDELITY_N = 128  # samples per control-fidelity row during training

CONTROL_OPTIONS = (
    SampleOption("control", "str", None, "the control image: a PNG (a control map), test:I or test:I-J (the "
                                         "control maps of test images); several nets: comma-separated, this "
                                         "run's first (default: test image i's map for sample i)"),
    SampleOption("control_from", "str", None, "test:I or test:I-J: extract the control from those test images "
                                              "(the same as --control test:I)"),
    SampleOption("control_type", "str", None, "the --control PNG is a picture: extract this run's control "
                                              "(its type, e.g. edges) from it"),
    SampleOption("control_scale", "str", None, "weight of the control residuals (0 = the base alone); several "
                                               "nets: comma-separated (default 1)"),
    SampleOption("guess_mode", "choice", None, "on: the ControlNet sees no class/text, residuals 0.1 -> 1 with "
                                               "depth", choices=("on", "off")),
    SampleOption("guide_control", "choice", None, "on: classifier-free guidance also on the control (its "
                                                  "unconditional half sees no control)", choices=("on", "off")),
    SampleOption("controlnets", "str", None, "more ControlNet runs on the same base, comma-separated (their "
                                             "controls follow this run's in --control)"),
)


class ControlNetFamily(DiffusionFamily):
    name = "controlnet"
    frozen_sections = ("diffusion", "control")
    sample_options = SAMPLE_OPTIONS + CONTROL_OPTIONS

    def prepare_config(self, cfg) -> None:
        """Take the base run's diffusion, latent and text sections (the ControlNet's condition
        dropout kept), so the data, objective and sampler are the base's."""
        base = cfg.model.base
        if not base or base == REQUIRED:
            raise ConfigError("model.base is required: a ControlNet steers a trained diffusion run; train one first "
                              "(e.g. genmodels train mnist-cfg --out runs/mnist-cfg) and pass model.base=runs/mnist-cfg")
        if cfg.control.type is None:
            raise ConfigError(f"control.type is required: one of {', '.join(CONTROL_TYPES)}")
        saved = read_run_config(base)["config"]
        if saved.get("family") != "diffusion" or saved.get("model", {}).get("network") != "unet":
            raise ConfigError(f"model.base '{base}' is a {saved.get('family')} run with a "
                              f"{saved.get('model', {}).get('network')} network; a ControlNet needs a diffusion run "
                              "with a U-Net (model.network: unet)")
        inherited = from_dict({k: saved[k] for k in ("family", *INHERITED_SECTIONS) if k in saved})
        own = {k: getattr(cfg.diffusion, k) for k in OWN_DIFFUSION_FIELDS}
        for section in INHERITED_SECTIONS:
            cfg.sections[section] = getattr(inherited, section)
        for key, value in own.items():
            setattr(cfg.diffusion, key, value)
        cfg.model.network = "controlnet"

    def parts(self, cfg):
        return build.diffusion_parts(cfg, cfg.model.options.get("unet", {}))

    def network_options(self, cfg, dataset) -> dict:
        record = read_run_config(cfg.model.base)
        unet = dict(record["config"]["model"])
        unet.pop("network")
        unet.pop("base", None)
        net_shape = tuple(record.get("latent_shape", record["data_shape"]))
        if tuple(dataset.shape) != net_shape:
            raise ConfigError(f"model.base '{cfg.model.base}' denoises items of shape {net_shape}, but data "
                              f"'{cfg.data.name}' gives {tuple(dataset.shape)}; use the base's data")
        image_shape = tuple(record["data_shape"])
        options = dict(cfg.model.options)
        options.update(unet=unet, control_channels=control_channels(cfg.control.type, image_shape[0]),
                       factor=image_shape[-1] // net_shape[-1], hint_channels=list(cfg.control.hint_channels))
        return options

    def build(self, cfg, options: dict) -> dict:
        self.parts(cfg)
        return {"control": ControlNet(unet_options=options["unet"], control_channels=options["control_channels"],
                                      hint_channels=options["hint_channels"], factor=options["factor"])}

    def training(self, ctx: TrainContext) -> TrainParts:
        base_net, control = _base_net(ctx.bases), ctx.modules["control"]
        control.copy_from(base_net)  # a fresh run starts as the base; a resume loads its own weights after this
        zero = {id(p) for p in control.zero_conv_parameters()}
        groups = [{"params": [p for p in control.parameters() if id(p) not in zero]},
                  {"params": control.zero_conv_parameters(), "lr": ctx.cfg.train.lr * ctx.cfg.control.zero_lr_scale}]
        ema = ctx.ema("control")
        return self.denoising_parts(ctx, ControlledUNet(base_net, [control]), ctx.adamw(groups), {"control": ema},
                                    lambda: ControlledUNet(base_net, [ema.module]))

    def draw_cond(self, ctx: TrainContext, seeds) -> dict:
        maps = ctx.dataset.cond["image"]
        return {"image": maps[torch.as_tensor(list(seeds), device=maps.device) % len(maps)]}

    def _preview(self, ctx, draw):
        def preview(png_path):  # the controls of the first 8 training items above what they drew
            x = draw(range(8)).clamp(-1, 1).cpu()
            maps = self.draw_cond(ctx, range(8))["image"].float().cpu()
            save_grid(torch.cat([_as_picture(maps, x.shape[1]), x]), png_path, nrow=8, scale=2)
        return preview

    def _evaluate(self, ctx, draw):
        """Every ``train.eval_every_images``: the control fidelity of FIDELITY_N samples drawn
        for the first training items' controls (how convergence is seen: the zero convs wake
        late, "sudden convergence"), beside the proxy fd_cnn / KID."""
        if not (ctx.cfg.train.eval_every_images and ctx.dist.is_main):
            return None
        proxy = super()._evaluate(ctx, draw)
        kind, n = ctx.cfg.control.type, min(FIDELITY_N, len(ctx.dataset.cond["image"]))

        def evaluate() -> dict:
            x = draw(range(n)).clamp(-1, 1)
            fidelity = control_fidelity(kind, x, self.draw_cond(ctx, range(n))["image"]).mean().item()
            return {**(proxy() if proxy else {"eval": "proxy"}), "control_fidelity": round(fidelity, 4)}
        return evaluate

    def load(self, run: LoadedRun) -> ControlPipeline:
        path, param, _ = self.parts(run.config)
        base_net = _base_net(run.bases)
        return ControlPipeline(run.run_dir, run.config, base_net, path, param, run.data_shape, run.class_names,
                               run.device, latent=latent_space(run.config, run.bases),
                               controls=[run.modules["control"]], control_types=[run.config.control.type],
                               base_dir=Path(run.record["bases"][BASE_FIELD]["path"]))

    def verbs(self) -> list:
        return []


def _base_net(bases: dict) -> UNet:
    base = bases[BASE_FIELD]
    net = base.modules.get("net")
    if not isinstance(net, UNet):
        raise ConfigError(f"the base run '{base.run_dir}' has no U-Net to steer")
    return net


def _as_picture(maps: torch.Tensor, channels: int) -> torch.Tensor:
    """Control maps shown beside images of ``channels`` channels (grey maps repeated)."""
    return maps.repeat(1, channels, 1, 1) if maps.shape[1] == 1 and channels == 3 else maps


@dataclass
class ControlPipeline(Pipeline):
    """A diffusion ``Pipeline`` whose network is the frozen base steered by ``controls``
    (module docstring); ``net`` is the base U-Net."""

    controls: list = dataclasses.field(default_factory=list)
    control_types: list = dataclasses.field(default_factory=list)
    base_dir: Path | None = None

    @property
    def cond_keys(self) -> frozenset:
        return frozenset(getattr(self.net, "cond_keys", ())) | {"image"}

    @property
    def net_num_classes(self):
        return self.config.model.options["unet"].get("num_classes")

    def with_controlnets(self, runs) -> ControlPipeline:
        """This pipeline with more ControlNet runs (directories or ``ControlPipeline``s) on the
        same base; their controls follow this one's in ``control``."""
        extra = [r if isinstance(r, ControlPipeline) else _load_control(r, self.device) for r in runs]
        for other in extra:
            if other.base_dir is not None and self.base_dir is not None and other.base_dir != self.base_dir:
                raise ConfigError(f"ControlNet '{other.run_dir}' steers the base {other.base_dir}, not {self.base_dir}; "
                                  "several ControlNets must share one base")
        return dataclasses.replace(self, controls=self.controls + [c for o in extra for c in o.controls],
                                   control_types=self.control_types + [t for o in extra for t in o.control_types])

    def control_images(self, n: int, control=None, *, control_type=None) -> torch.Tensor:
        """The concatenated control images [n, sum C_k, H, W] of the nets for ``n`` samples."""
        given = list(control) if isinstance(control, (list, tuple)) else [control] * len(self.controls) \
            if control is None else [control]
        if len(given) != len(self.controls):
            raise ConfigError(f"give one control per ControlNet ({len(self.controls)}), got {len(given)}")
        maps = [self._control_map(n, c, kind, control_type if i == 0 else None)
                for i, (c, kind) in enumerate(zip(given, self.control_types))]
        return torch.cat(maps, dim=1)

    def _control_map(self, n: int, control, kind: str, control_type) -> torch.Tensor:
        channels = control_channels(kind, self.data_shape[0])
        if isinstance(control, DefaultControls):
            maps = extract_control(kind, control.images)
        elif isinstance(control, (str, Path)) and str(control).startswith("test:"):
            maps = extract_control(kind, _test_images(self, str(control)))
        else:
            image = _read_control_image(control, self.data_shape[0] if control_type else channels)
            if control_type is not None:
                if control_type != kind:
                    raise ConfigError(f"--control-type {control_type}: this ControlNet reads {kind} maps")
                image = extract_control(kind, image)
            maps = image
        want = (channels, *self.data_shape[1:])
        if tuple(maps.shape[1:]) != want:
            raise ConfigError(f"control images must be {want[2]}x{want[1]} with {want[0]} channel(s) for this "
                              f"{kind} ControlNet, got {tuple(maps.shape[1:])} (C, H, W); resize it to {want[2]}x{want[1]}")
        if len(maps) == 1:
            maps = maps.expand(n, *want)
        elif len(maps) < n:  # fewer controls than samples: cycled
            maps = maps[torch.arange(n) % len(maps)]
        return maps[:n].float()

    def sample(self, n=64, *, control=None, control_from=None, control_type=None, control_scale=None,
               guess_mode=None, guide_control=None, controlnets=None, cond=None, **kwargs) -> torch.Tensor:
        if control_from is not None:
            if control is not None or not str(control_from).startswith("test:"):
                raise ConfigError("--control-from takes test:I or test:I-J, instead of --control")
            control = control_from
        pipe = self.with_controlnets(_split(controlnets)) if controlnets else self
        if isinstance(control, str) and "," in control:
            control = _split(control)
        scales = _scales(control_scale, len(pipe.controls))
        cond = dict(cond or {})
        if "image" not in cond:
            if control is None:
                control = [default_controls(self, n, kwargs.get("labels"))] * len(pipe.controls)
            cond["image"] = pipe.control_images(n, control, control_type=control_type)
        if guide_control in (True, "on"):  # the unconditional half without the control (and the class / prompt)
            given = {"y": kwargs.get("labels") is not None or "y" in cond,
                     "text": kwargs.get("prompt") is not None or "text" in cond}
            kwargs["guidance_keys"] = [k for k, on in given.items() if on] + ["image"]
        net = ControlledUNet(self.net, pipe.controls, scales, guess_mode=guess_mode in (True, "on"))
        return Pipeline.sample(dataclasses.replace(pipe, net=net), n, cond=cond, **kwargs)


@dataclass
class DefaultControls:
    """The test images whose control maps ``sample`` reads when given none."""

    images: torch.Tensor


def default_controls(pipe, n: int, labels=None) -> DefaultControls:
    """Sample i reads test image i's control (cycled); with ``labels``, a test image of the class
    sample i is asked for (its (i // K)-th, cycled), so an evaluation asking for classes i mod K
    gets controls of those classes."""
    split = run_split(pipe.config.data)
    if labels is None or split.y is None:
        return DefaultControls(split.x[torch.arange(n) % len(split.x)])
    asked = [labels] * n if isinstance(labels, int) else [int(k) for k in labels]
    by_class = {k: (split.y == k).nonzero().flatten() for k in set(asked)}
    missing = sorted(k for k, rows in by_class.items() if not len(rows))
    if missing:
        raise ConfigError(f"no test image of class(es) {missing} to take a default control from; pass --control")
    rows = [by_class[k][(i // max(len(by_class), 1)) % len(by_class[k])] for i, k in enumerate(asked)]
    return DefaultControls(split.x[torch.stack(rows)])


def _split(text) -> list:
    if isinstance(text, (list, tuple)):
        return list(text)
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _scales(control_scale, count: int) -> list[float]:
    if control_scale is None:
        return [1.0] * count
    values = control_scale if isinstance(control_scale, (list, tuple)) else _split(control_scale) \
        if isinstance(control_scale, str) else [control_scale]
    try:
        values = [float(v) for v in values]
    except ValueError:
        raise ConfigError(f"--control-scale '{control_scale}' must be numbers, one per ControlNet") from None
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise ConfigError(f"give one control scale for all or one per ControlNet ({count}), got {len(values)}")
    return values


def _test_images(pipe, spec: str) -> torch.Tensor:
    split = run_split(pipe.config.data)
    body = spec[len("test:"):]
    try:
        lo, _, hi = body.partition("-")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise ConfigError(f"control '{spec}' must be test:I or test:I-J (test image indices)") from None
    if not 0 <= lo <= hi < len(split):
        raise ConfigError(f"control '{spec}': the test split of '{pipe.config.data.name}' has images 0..{len(split) - 1}")
    return split.x[lo:hi + 1]


def _read_control_image(control, channels: int) -> torch.Tensor:
    from ..images import load_image

    if isinstance(control, (str, Path)):
        return load_image(control, channels=channels)
    image = torch.as_tensor(control, dtype=torch.float32)
    return image[None] if image.ndim == 3 else image


def _load_control(run_dir, device) -> ControlPipeline:
    from .loading import load

    pipe = load(run_dir, device=device)
    if not isinstance(pipe, ControlPipeline):
        raise ConfigError(f"'{run_dir}' is a {pipe.config.family} run, not a ControlNet")
    return pipe


register(ControlNetFamily())

__all__ = ["ControlNetFamily", "ControlPipeline"]
