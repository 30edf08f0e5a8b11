"""Load a trained run and sample from it.

    >>> pipe = genmodels.load("runs/demo")
    >>> images = pipe.sample(64, seed=0, sampler="ddim", steps=50)   # [-1, 1], NCHW
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import build
from .config import from_dict
from .diffusion import sigma_grid
from .errors import CheckpointError, ConfigError
from .diffusion.guidance import CFGDenoiser, ClassifierGuidance, DynamicThresholding, NoisyClassifierOnVE
from .samplers import SeededNoise, run_sampler
from .train.checkpoint import check_weights_file, check_weights_files, load_weights
from .train.distributed import Dist


@torch.inference_mode()
def generate(denoiser, path, *, shape, seeds, sampler="ddim", steps=50, eta=None, spacing=None,
             sigma_max=None, labels=None, batch_size=64, device="cpu", progress=False, options=None,
             dist: Dist = Dist()) -> torch.Tensor:
    """Draw one sample per seed; sample i depends only on seeds[i] (and labels[i]).

    Under torchrun (``dist`` from ``train.distributed.setup``) rank r draws batches r,
    r + world_size, ... of the seeds, the same batches one process would draw, and every rank
    returns all samples: the result equals one process's.

    ``options`` go to the sampler (e.g. ``s_churn`` for heun, ``order`` for unipc, ``rtol`` for
    rk45).

    Starts from x_1 ~ N(0, 1) at the path's first grid time, in VE coordinates x = x_1 / alpha.
    Returns float32 on the CPU, shape [len(seeds), *shape].
    """
    sigmas = sigma_grid(path, steps, spacing=spacing, sigma_max=sigma_max)
    seeds = list(seeds)

    def draw(batch: slice) -> torch.Tensor:
        noise = SeededNoise(seeds[batch], shape, device=device)
        x = noise() * path.prior_std(sigmas[0]).item()
        cond = {} if labels is None else {"y": torch.as_tensor(labels[batch], device=device, dtype=torch.long)}
        x = run_sampler(sampler, denoiser, x, sigmas, noise=noise, eta=eta, cond=cond,
                        progress=progress and dist.is_main, **(options or {}))
        return x.float().cpu()

    return dist.map_batches(len(seeds), batch_size, draw)


def check_labels(labels, n: int, num_classes: int | None) -> list | None:
    """``labels`` (one class for all, or one per sample) as a list of ``n``, checked against a
    model with ``num_classes`` classes (None: not class-conditional)."""
    if labels is None:
        return None
    if num_classes is None:
        raise ConfigError("this model is not class-conditional; drop the class labels")
    labels = [labels] * n if isinstance(labels, int) else list(labels)
    bad = [y for y in labels if not 0 <= int(y) < num_classes]
    if bad:
        raise ConfigError(f"class {bad[0]} is out of range: this model has classes 0..{num_classes - 1}")
    if len(labels) != n:
        raise ConfigError(f"got {len(labels)} labels for {n} samples")
    return labels


@dataclass
class Pipeline:
    """Everything rebuilt from a run directory: config, network (EMA weights by default), path."""

    run_dir: Path
    config: object
    net: torch.nn.Module
    path: object
    param: object
    data_shape: tuple
    class_names: tuple
    device: torch.device

    @property
    def denoiser(self):
        return build.make_denoiser(self.net, self.path, self.param)

    def sample(self, n=64, *, seed=0, sampler="ddim", steps=50, eta=None, spacing=None, sigma_max=None,
               labels=None, guidance=1.0, guidance_interval=None, dynamic_threshold=None,
               classifier=None, classifier_scale=1.0, batch_size=64, progress=True, dist=Dist(),
               **options) -> torch.Tensor:
        """``n`` samples; sample i uses seed ``seed + i``. Images are clamped to [-1, 1].

        ``labels``: one class index for all, or one per sample (class-conditional runs).
        ``guidance``: classifier-free guidance scale w (1 = conditional, 0 = unconditional),
        ``guidance_interval=(sigma_lo, sigma_hi)`` limits it to those noise levels.
        ``dynamic_threshold``: Imagen's percentile (e.g. 0.995) for clipping x0.
        ``classifier``: a ``load_classifier`` result (or its run directory) for classifier
        guidance with ``classifier_scale``; works on unconditional models too.
        ``dist``: split the batches over the ranks of a torchrun launch (see ``generate``).
        Other keywords go to the sampler (``s_churn``, ``order``, ``rtol``, ...).
        """
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        if isinstance(classifier, (str, Path)):
            classifier = load_classifier(classifier, device=self.device)
        if labels is not None:
            if self.net_num_classes is None and classifier is None:
                raise ConfigError("this model is not class-conditional; drop the class labels or pass a classifier")
            num_classes = self.net_num_classes or getattr(getattr(classifier, "net", None), "num_classes", None)
            labels = check_labels(labels, n, num_classes)
        elif guidance != 1.0 or classifier is not None:
            raise ConfigError("guidance needs class labels: pass labels (CLI: --class K or --class all)")
        denoiser = self.denoiser
        if guidance != 1.0:
            denoiser = CFGDenoiser(denoiser, guidance, self.net_num_classes, interval=guidance_interval)
        if classifier is not None:
            denoiser = ClassifierGuidance(denoiser, classifier, classifier_scale,
                                          conditional_denoiser=self.net_num_classes is not None)
        if dynamic_threshold is not None:
            denoiser = DynamicThresholding(denoiser, dynamic_threshold)
        x = generate(denoiser, self.path, shape=self.data_shape, seeds=range(seed, seed + n),
                     sampler=sampler, steps=steps, eta=eta, spacing=spacing, sigma_max=sigma_max, labels=labels,
                     batch_size=batch_size, device=self.device, progress=progress, options=options,
                     dist=dist)
        return x.clamp(-1, 1) if len(self.data_shape) == 3 else x

    @torch.inference_mode()
    def invert(self, images, *, steps=50, spacing=None, labels=None):
        """DDIM inversion: the noise that deterministic DDIM on the same grid maps to ``images``
        ([-1, 1], NCHW); returns (noise in VE coordinates, reconstruction, RMS round-trip error)."""
        from .samplers import ddim_invert, sample_ddim

        x0 = torch.as_tensor(images, dtype=torch.float32).to(self.device)
        if tuple(x0.shape[1:]) != tuple(self.data_shape):
            raise ConfigError(f"images of shape {tuple(x0.shape[1:])} do not fit this model's "
                              f"{tuple(self.data_shape)}")
        sigmas = sigma_grid(self.path, steps, **({} if spacing is None else {"spacing": spacing}))
        cond = {} if labels is None else {"y": torch.as_tensor(labels, device=self.device).long()}
        noise = ddim_invert(self.denoiser, x0, sigmas, cond=cond)
        recon = sample_ddim(self.denoiser, noise.clone(), sigmas, cond=cond)
        return noise.cpu(), recon.cpu(), (recon - x0).square().mean().sqrt().item()

    @property
    def net_num_classes(self):
        return self.config.model.options.get("num_classes")

    def sample_settings(self, *, sampler=None, steps=None, eta=None) -> dict:
        """The sampler settings ``sample`` gets for these overrides: the run's own otherwise."""
        s = self.config.sample
        return dict(sampler=sampler or s.sampler, steps=steps or s.steps, eta=s.eta if eta is None else eta)


def read_run_config(run_dir) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory '{run_dir}' does not exist")
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"'{run_dir}' is not a genmodels run directory: config.json is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None


WEIGHT_FILES = {"ema": "ema.safetensors", "model": "model.safetensors"}


def load_run(run_dir, *, device="auto", weights="ema", family=None, channels_last=True):
    """Rebuild a run directory's modules (its family's ``build``) with ``weights`` loaded, on
    ``device``, frozen for inference. ``family``: refuse runs of any other family."""
    from .families import LoadedRun, get_family

    run_dir = Path(run_dir)
    record = read_run_config(run_dir)
    cfg = from_dict(record["config"])
    if family is not None and cfg.family != family:
        hint = "load it with genmodels.load_classifier / --classifier" if cfg.family == "classifier" else \
            "load it with genmodels.load"
        raise ConfigError(f"'{run_dir}' holds a {cfg.family} run, not a {family}; {hint}")
    if weights not in WEIGHT_FILES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_FILES)}, got '{weights}'")
    check_weights_files(run_dir / name for name in WEIGHT_FILES.values())  # damaged ones, read or not
    modules = get_family(cfg.family).build(cfg, cfg.model.options)
    if weights == "ema":  # modules without an EMA (a GAN's discriminator) keep their raw weights
        averaged = {k.split(".", 1)[0] for k in check_weights_file(run_dir / WEIGHT_FILES["ema"])}
        load_weights({k: m for k, m in modules.items() if k in averaged}, run_dir / WEIGHT_FILES["ema"])
        rest = {k: m for k, m in modules.items() if k not in averaged}
        if rest:
            load_weights(rest, run_dir / WEIGHT_FILES["model"])
    else:
        load_weights(modules, run_dir / WEIGHT_FILES[weights])
    device = _device(device)
    # The memory format the run trained in: convolutions round differently in channels_last,
    # and sampling in the same format keeps samples bit-identical to the trainer's previews.
    images = len(record["data_shape"]) == 3
    memory_format = torch.channels_last if channels_last and cfg.train.channels_last and images \
        else torch.contiguous_format
    for module in modules.values():
        module.to(device=device, memory_format=memory_format).eval().requires_grad_(False)
    return LoadedRun(run_dir, record, cfg, modules, device)


def load_classifier(run_dir, *, device="auto", weights="ema"):
    """A noise-aware classifier run (family: classifier) as ``classifier(x, sigma) -> logits`` on
    VE states, ready for ``genmodels.diffusion.guidance.ClassifierGuidance``."""
    run = load_run(run_dir, device=device, weights=weights, family="classifier", channels_last=False)
    path, _, _ = build.classifier_parts(run.config)
    return NoisyClassifierOnVE(run.modules["net"], path)


def _device(device) -> torch.device:
    """A name (auto | cpu | cuda), or a torch.device as given (e.g. cuda:LOCAL_RANK under torchrun)."""
    return device if isinstance(device, torch.device) else build.resolve_device(device)


def load(run_dir, *, device="auto", weights="ema"):
    """Rebuild a trained model from ``run_dir`` (config.json + safetensors): its family's
    pipeline, with ``sample(n, seed=)`` for every family."""
    from .families import get_family

    run = load_run(run_dir, device=device, weights=weights)
    return get_family(run.config.family).load(run)
