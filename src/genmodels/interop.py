"""diffusers interop: a diffusers ``UNet2DModel`` and its scheduler's config as a genmodels
diffusion ``Pipeline``, so every sampler, guidance wrapper, editing tool and metric here runs on it.

    >>> pipe = genmodels.interop.from_diffusers("hf/ddpm-folder")        # save_pretrained output
    >>> x = pipe.sample(16, seed=0, sampler="dpmpp_2m", steps=20)       # [-1, 1], NCHW
    $ genmodels sample diffusers:hf/ddpm-folder --sampler heun --steps 18

The scheduler's config is read only for the training schedule (``num_train_timesteps``,
``beta_schedule``, ``beta_start``/``beta_end``), what the net predicts (``prediction_type``), the
default grid (``timestep_spacing``, ``steps_offset``) and x0 clipping (``clip_sample``); the
sampling itself is ours. The schedule becomes our own ``DiscreteDDPM`` path (diffusers'
``squaredcos_cap_v2`` is our ``cosine``), the prediction our parameterization, and the net sees
the path's ``c_noise``: the step index n of sigma, exact on the training grid and interpolated
in log sigma between steps (k-diffusion's DiscreteSchedule), which diffusers' sinusoidal timestep
embedding takes as a float. A class-conditional UNet (``num_class_embeds``) reads ``cond["y"]``.

diffusers is an optional dependency (``pip install genmodels[peers]``), imported on first use.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import nn

from . import build
from .cond import check_reads
from .config import Config, DataConfig, ModelConfig
from .diffusion import DiscreteDDPM, get_parameterization
from .diffusion.params import ClippedPrediction
from .errors import ConfigError
from .families.diffusion import Pipeline
from .families.loading import SOURCES

# diffusers' names -> ours
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
SCHEDULER_FILE = "scheduler_config.json"


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ConfigError("diffusers models need the diffusers package: pip install diffusers "
                          "(or pip install 'genmodels[peers]')") from None
    return diffusers


class DiffusersUNet(nn.Module):
    """``net(x_t, c_noise, cond)`` over a diffusers ``UNet2DModel``: c_noise is the (fractional)
    timestep, ``cond["y"]`` its ``class_labels``. A UNet with a learned variance (twice the
    input's channels out) gives its first half, the eps / v / x0 prediction.

    ``num_classes``: the classes a sample may ask for; below ``num_class_embeds`` the next index
    is the null class of classifier-free guidance (genmodels' convention: the embedding's extra
    row); equal to it (the default), there is no null class and guidance on ``y`` is refused."""

    def __init__(self, unet, *, num_classes=None):
        super().__init__()
        cfg = unet.config
        if cfg.time_embedding_type != "positional":
            raise ConfigError(f"a UNet2DModel with time_embedding_type={cfg.time_embedding_type!r} is not supported "
                              "(only 'positional': a fourier one is a score-SDE VE model, a learned one takes "
                              "integer steps only)")
        if cfg.class_embed_type is not None:
            raise ConfigError(f"a UNet2DModel with class_embed_type={cfg.class_embed_type!r} is not supported; "
                              "class conditioning is read as num_class_embeds labels (cond['y'])")
        if cfg.out_channels not in (cfg.in_channels, 2 * cfg.in_channels):
            raise ConfigError(f"a UNet2DModel with {cfg.in_channels} input and {cfg.out_channels} output channels "
                              "predicts neither the noise nor it with a variance")
        self.unet, self.channels = unet, cfg.in_channels
        self.num_class_embeds = cfg.num_class_embeds
        if self.num_class_embeds is None:
            if num_classes is not None:
                raise ConfigError("num_classes is for class-conditional UNets (num_class_embeds); this one is not")
            self.num_classes, self.cond_keys = None, frozenset()
        else:
            self.num_classes = self.num_class_embeds if num_classes is None else int(num_classes)
            if not 1 <= self.num_classes <= self.num_class_embeds:
                raise ConfigError(f"num_classes must lie in 1..{self.num_class_embeds} (the UNet's num_class_embeds), "
                                  f"got {num_classes}")
            self.cond_keys = frozenset({"y"})

    def forward(self, x, c_noise, cond=None):
        cond = check_reads(cond, self.cond_keys, who="this diffusers UNet2DModel")
        if self.num_class_embeds is not None and "y" not in cond:
            raise ConfigError("this diffusers UNet2DModel is class-conditional: pass labels (CLI: --class K)")
        dtype = self.unet.dtype  # a half-precision UNet computes in its own dtype
        out = self.unet(x.to(dtype), c_noise.to(dtype), class_labels=cond.get("y"), return_dict=False)[0]
        return out[:, :self.channels].to(x.dtype)

    def null_cond(self, key, value):
        """The null class (``num_classes``) when the embedding has a row for it."""
        if key == "y" and self.num_classes == self.num_class_embeds:
            raise ConfigError(f"this diffusers UNet2DModel has no null class (all {self.num_class_embeds} class "
                              "embeddings are classes), so classifier-free guidance on classes does not apply; "
                              "if it was trained with the last one as the null class, load it with "
                              f"num_classes={self.num_class_embeds - 1}")
        return None  # the registry's: the index num_classes


def scheduler_settings(scheduler) -> dict:
    """The full config of a diffusers scheduler (an instance, or its config dict, e.g. read from
    scheduler_config.json), with the defaults of its class (``_class_name``; DDPMScheduler's
    when absent) filled in, as diffusers would."""
    if hasattr(scheduler, "config"):
        return dict(scheduler.config)
    if not isinstance(scheduler, dict):
        raise ConfigError(f"scheduler must be a diffusers scheduler, its config dict or a folder / "
                          f"{SCHEDULER_FILE} file, got {type(scheduler).__name__}")
    diffusers = _diffusers()
    name = scheduler.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ConfigError(f"unknown diffusers scheduler class {name!r} in the scheduler config")
    # the defaults of its __init__ (the config's fields), read without building it: an
    # unsupported field value then gets our message, not the scheduler's own exception
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **{k: v for k, v in scheduler.items() if not k.startswith("_")}}


def schedule_from_scheduler(scheduler) -> tuple[DiscreteDDPM, object]:
    """(our DiscreteDDPM path, our parameterization) of a diffusers scheduler or its config: the
    same alphas_cumprod, prediction and default grid, with ``clip_sample`` as x0 clipping."""
    s = scheduler_settings(scheduler)
    if s.get("trained_betas") is not None:
        raise ConfigError("a scheduler with trained_betas is not supported; give its beta_schedule instead")
    schedule = s.get("beta_schedule", "linear")
    if schedule not in BETA_SCHEDULES:
        raise ConfigError(f"beta_schedule {schedule!r} is not supported; supported: {', '.join(BETA_SCHEDULES)}")
    if s.get("rescale_betas_zero_snr"):
        raise ConfigError("rescale_betas_zero_snr=True is not supported: its last step has zero SNR (an infinite "
                          "VE noise level), which the VE coordinates of genmodels' samplers cannot start from")
    if s.get("thresholding"):
        raise ConfigError("the scheduler's thresholding=True is not applied; turn it off and sample with genmodels' "
                          "dynamic thresholding instead (dynamic_threshold=0.995, CLI: --threshold 0.995)")
    prediction = s.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ConfigError(f"prediction_type {prediction!r} is not supported; supported: {', '.join(PREDICTIONS)}")
    spacing = s.get("timestep_spacing") or "leading"
    path = DiscreteDDPM(schedule=BETA_SCHEDULES[schedule], timesteps=int(s.get("num_train_timesteps", 1000)),
                        beta_start=float(s.get("beta_start", 1e-4)), beta_end=float(s.get("beta_end", 0.02)),
                        spacing=spacing, steps_offset=int(s.get("steps_offset") or 0))
    param = get_parameterization(PREDICTIONS[prediction])
    if s.get("clip_sample"):
        param = ClippedPrediction(param, float(s.get("clip_sample_range", 1.0)))
    return path, param


def _folders(folder: Path) -> tuple[Path, Path | None]:
    """(the UNet's folder, the scheduler config file or None) of a save_pretrained folder: a
    pipeline's (model_index.json, unet/, scheduler/) or a UNet's own (config.json, with the
    scheduler's config beside it or in scheduler/)."""
    if not folder.is_dir():
        raise ConfigError(f"diffusers model folder '{folder}' does not exist")
    unet = folder / "unet" if (folder / "model_index.json").is_file() else folder
    if not (unet / "config.json").is_file():
        raise ConfigError(f"'{unet}' holds no diffusers model (config.json is missing); give a folder that a "
                          "UNet2DModel or a DDPM/DDIM pipeline was saved to with save_pretrained")
    for candidate in (folder / "scheduler" / SCHEDULER_FILE, folder / SCHEDULER_FILE, unet / SCHEDULER_FILE):
        if candidate.is_file():
            return unet, candidate
    return unet, None


def _read_scheduler(location) -> dict:
    path = Path(location)
    if path.is_dir():
        path = path / SCHEDULER_FILE
    if not path.is_file():
        raise ConfigError(f"no diffusers scheduler config at '{path}'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None


def load_unet(folder):
    """A UNet2DModel from a local save_pretrained folder (never the hub)."""
    diffusers = _diffusers()
    unet_dir, _ = _folders(Path(folder))
    name = json.loads((unet_dir / "config.json").read_text()).get("_class_name")
    if name != "UNet2DModel":
        raise ConfigError(f"'{unet_dir}' holds a diffusers {name}; genmodels reads UNet2DModel (unconditional or "
                          "class-conditional pixel-space models)")
    return diffusers.UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True)


def from_diffusers(model, scheduler=None, *, data: str | None = None, num_classes: int | None = None,
                   device="auto") -> Pipeline:
    """A genmodels diffusion ``Pipeline`` over a diffusers UNet2DModel (``model``: the module,
    a DDPM/DDIM pipeline object, or a folder either was saved to with ``save_pretrained``) and the
    scheduler it was trained with (``scheduler``: a diffusers scheduler, its config dict, or a
    folder / scheduler_config.json; default: the pipeline's, or the one saved in the folder).
    A module given is used as it is: moved to ``device``, in eval mode, without gradients.

    ``data``: the genmodels dataset the model was trained on (e.g. "mnist"), which ``evaluate``
    compares its samples with; ``num_classes``: see ``DiffusersUNet``. The pipeline's
    ``denoiser`` is D(x, sigma, cond) in VE coordinates, ``sample(n, seed=, sampler=, steps=)``
    samples with any genmodels sampler (default grid: the scheduler's timestep_spacing)."""
    run_dir = None
    if hasattr(model, "unet") and hasattr(model, "scheduler"):  # a diffusers pipeline object
        model, scheduler = model.unet, model.scheduler if scheduler is None else scheduler
    if isinstance(model, (str, Path)):
        run_dir = Path(model)
        _, saved = _folders(run_dir)
        if scheduler is None:
            if saved is None:
                raise ConfigError(f"'{run_dir}' holds no {SCHEDULER_FILE} (in it or in scheduler/); pass the "
                                  "scheduler the model was trained with")
            scheduler = saved
        model = load_unet(run_dir)
    elif scheduler is None:
        raise ConfigError("pass the scheduler (or its config) the UNet was trained with")
    if isinstance(scheduler, (str, Path)):
        scheduler = _read_scheduler(scheduler)
    path, param = schedule_from_scheduler(scheduler)
    device = device if isinstance(device, torch.device) else build.resolve_device(device)
    net = DiffusersUNet(model, num_classes=num_classes).to(device).eval().requires_grad_(False)
    size = model.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    # the data section: what evaluation compares with, at the model's resolution and channels
    data_cfg = DataConfig(name=data or "diffusers", image_size=size[0] if size[0] == size[1] else None,
                          channels=net.channels)
    cfg = Config(family="diffusion", data=data_cfg,
                 model=ModelConfig(network="diffusers", options={} if net.num_classes is None
                                   else {"num_classes": net.num_classes}))
    d = cfg.diffusion  # recorded for what reads the run's config (the evaluation protocol, reports)
    d.path, d.schedule, d.timesteps = "ddpm", path.schedule, path.timesteps
    d.beta_start, d.beta_end = float(path.betas[0]), float(path.betas[-1])
    d.prediction = param.name
    return Pipeline(run_dir, cfg, net, path, param, (net.channels, *size), (), device)


def _load_source(location: str, *, device="auto") -> Pipeline:
    """``FOLDER`` or ``FOLDER@DATASET`` (the genmodels dataset it was trained on, for ``eval``)."""
    folder, at, data = location.rpartition("@")
    if not at or Path(location).is_dir():
        folder, data = location, None
    return from_diffusers(folder, data=data, device=device)


SOURCES["diffusers"] = _load_source  # genmodels.load("diffusers:FOLDER[@DATASET]"), the CLI's RUN arguments

__all__ = ["BETA_SCHEDULES", "DiffusersUNet", "PREDICTIONS", "from_diffusers", "load_unet", "schedule_from_scheduler",
           "scheduler_settings"]
