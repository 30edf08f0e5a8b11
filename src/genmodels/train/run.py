"""``genmodels train``: wire data, family and trainer for one run directory.

Also under torchrun (one process per rank; see ``distributed.py``):

    torchrun --standalone --nproc_per_node=2 -m genmodels train mnist-ddpm --out runs/ddp
"""

import dataclasses
import json
from pathlib import Path

import torch

from .. import build
from .._version import __version__
from ..config import Config, from_dict, to_dict
from ..data import InfiniteBatches, derive_seed, exclude_classes, load_dataset
from ..errors import CheckpointError, ConfigError
from ..families.base import TrainContext
from ..families.loading import base_record, check_base, get_family, load_run, run_references
from ..families.latent import latent_training_data
from ..data.control import control_training_data
from ..data.masking import batch_transforms
from ..data.text import text_training_data
from . import distributed
from .checkpoint import load_weights, save_json
from .distributed import Dist
from .optim import make_adamw
from .trainer import Trainer

DROPOUT_STREAM = 2  # derive_seed(seed, DROPOUT_STREAM, rank) seeds each rank's global RNG

# Sections that fix what the weights mean: a resumed run must not change them (plus each
# family's own, ``family.frozen_sections``).
FROZEN_SECTIONS = ("family", "data", "model")


def check_run_dir(run_dir: Path, *, resume: bool) -> None:
    has_state = (run_dir / "state.pt").is_file()
    if resume and not has_state:
        raise CheckpointError(f"cannot resume: '{run_dir}' holds no state.pt (not a run directory, "
                              "or its first checkpoint was never written)")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise CheckpointError(f"run directory '{run_dir}' already exists and is not empty; pass "
                              "--resume to continue it or choose another --out")


def check_resumable(saved: dict, cfg: Config, sections=FROZEN_SECTIONS) -> None:
    new, defaults = to_dict(cfg), to_dict(Config())
    for section in sections:
        old = saved.get(section)
        if isinstance(old, dict) and isinstance(defaults.get(section), dict):
            # a field added to the section since the run started: it trained with the default
            old = {**{k: v for k, v in defaults[section].items() if k not in old}, **old}
        if old != new.get(section):
            raise ConfigError(f"cannot resume with a different '{section}' section than the run "
                              f"was started with (saved: {saved.get(section)}, now: {new.get(section)})")


def init_weights(modules: dict, source) -> None:
    """Load ``source`` (a run directory: its EMA weights; or a .safetensors file) into
    ``modules``: reflow and distillation start from the model they improve."""
    source = Path(source)
    file = source / "ema.safetensors" if source.is_dir() else source
    if not file.is_file():
        raise CheckpointError(f"train.init_from: '{file}' does not exist")
    load_weights(modules, file)


def prepare(cfg: Config, run_dir, *, resume=False, dist: Dist = Dist(), device=None):
    """Build a Trainer for ``cfg`` writing to ``run_dir`` (resumed from its checkpoint if asked).

    The family (``genmodels.families``) supplies the modules, phases, EMAs and preview; this
    wires the parts every family shares: data shards, device, DDP, run directory, resume.
    ``dist`` and ``device`` come from ``distributed.setup`` under torchrun; by default the run is
    one process on ``cfg.train.device``.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume)
    dist.barrier()  # every rank has looked at run_dir before rank 0 writes into it
    device = build.resolve_device(cfg.train.device) if device is None else device
    t = cfg.train
    family = get_family(cfg.family)
    family.prepare_config(cfg)  # a composed run takes its base's sections (ControlNet)
    micro_batch = distributed.check_batch_split(t.batch_size, dist, t.grad_accum)
    torch.manual_seed(cfg.train.seed)
    dataset = load_dataset(cfg.data.name, split="train", image_size=cfg.data.image_size,
                           channels=cfg.data.channels, skip_bad=cfg.data.skip_bad,
                           n_points=cfg.data.n_points, seed=cfg.train.seed)
    dataset = exclude_classes(dataset, cfg.data.exclude_classes)  # held-out classes never reach training
    # the frozen runs this one builds on (model.base, ...): recorded with their weights' sha256
    references = run_references(cfg)
    bases = {field: load_run(path, device=device) for field, path in references.items()}
    saved_record = json.loads((run_dir / "config.json").read_text()) if resume else None
    if resume and cfg.latent.autoencoder and cfg.latent.scale_factor is None:  # the scale it trained with
        cfg.latent.scale_factor = saved_record["config"].get("latent", {}).get("scale_factor")
    image_shape = dataset.shape
    dataset = control_training_data(cfg, dataset)  # ControlNet runs: the control maps, from the pixels
    dataset = latent_training_data(cfg, dataset, bases, progress=dist.is_main)  # latent runs: cached latents
    dataset = text_training_data(cfg, dataset, progress=dist.is_main)  # text runs: the captions' embeddings
    cfg.model.options = options = family.network_options(cfg, dataset)
    transforms = batch_transforms(cfg, image_shape)  # inpainting runs: the training masks
    modules = family.build(cfg, options)
    if t.init_from and not resume:
        init_weights(modules, t.init_from)
    channels_last = cfg.train.channels_last and len(dataset.shape) == 3
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for module in modules.values():
        module.to(device=device, memory_format=memory_format)
    torch.manual_seed(derive_seed(t.seed, DROPOUT_STREAM, dist.rank))  # the weights are drawn: now per rank

    if resume:
        composed = ((("latent",) if cfg.latent.autoencoder else ()) + (("text",) if cfg.text.captions else ())
                    + (("inpaint",) if transforms else ()) + (("control",) if cfg.control.type else ()))
        check_resumable(saved_record["config"], cfg, FROZEN_SECTIONS + tuple(family.frozen_sections) + composed)
        bases_record = saved_record.get("bases", {})
        for field, recorded in bases_record.items():  # the bases it started on, unchanged
            check_base(field, recorded, run_dir=run_dir)
    else:
        bases_record = {field: base_record(path) for field, path in references.items()}
    # data_shape: what samples are (images); latent runs also record the shape the network sees
    record = {"config": to_dict(cfg), "data_shape": list(image_shape),
              **({"latent_shape": list(dataset.shape)} if dataset.shape != image_shape else {}),
              "class_names": list(dataset.class_names), "genmodels_version": __version__, "bases": bases_record}

    # The data live on the device as one tensor; each micro-batch is one index gather.
    on_device = dataclasses.replace(dataset, x=dataset.x.to(device),
                                    y=None if dataset.y is None else dataset.y.to(device),
                                    noise=None if dataset.noise is None else dataset.noise.to(device),
                                    x_std=None if dataset.x_std is None else dataset.x_std.to(device),
                                    text=None if dataset.text is None else dataset.text.to(device),
                                    cond={k: v.to(device) for k, v in dataset.cond.items()})
    ctx = TrainContext(cfg=cfg, dataset=on_device, device=device, dist=dist, modules=modules,
                       autocast=build.autocast_dtype(t.precision, device), channels_last=channels_last, bases=bases,
                       run_dir=run_dir)
    parts = family.training(ctx)
    shards = dist.shards(t.grad_accum)
    batches = [InfiniteBatches(on_device, micro_batch, seed=t.seed, rank=s, device=device,
                               world_size=dist.world_size * t.grad_accum, transforms=transforms) for s in shards]
    trainer = Trainer(run_dir=run_dir, cfg=t, modules=modules, phases=parts.phases, emas=parts.emas,
                      batches=batches, device=device, preview=parts.preview, generator_seed=t.seed,
                      dist=dist, shards=shards, evaluate=parts.evaluate if dist.is_main else None)
    ctx.images_seen = lambda: trainer.progress.images_seen
    if resume:
        trainer.load()
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_json(record, run_dir / "config.json")
    return trainer


def train(cfg: Config, run_dir, *, resume=False):
    """Train ``cfg`` into ``run_dir``: one process, or every rank of a torchrun launch."""
    dist, device = distributed.setup(build.resolve_device(cfg.train.device))
    try:
        return prepare(cfg, run_dir, resume=resume, dist=dist, device=device).fit()
    finally:
        distributed.teardown(dist)


__all__ = ["prepare", "train", "from_dict", "make_adamw"]
