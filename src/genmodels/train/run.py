"""``genmodels train``: wire data, family and trainer for one run directory.

Also under torchrun (one process per rank; see ``distributed.py``):

    torchrun --standalone --nproc_per_node=2 -m genmodels train mnist-ddpm --out runs/ddp
"""

import dataclasses
import json
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import __version__, build
from ..config import Config, from_dict, to_dict
from ..data import InfiniteBatches, derive_seed, load_dataset
from ..errors import CheckpointError, ConfigError
from ..images import save_grid, scatter_plot
from ..pipeline import generate
from . import distributed
from .checkpoint import save_json
from .distributed import Dist
from .ema import EMA
from .trainer import Phase, Trainer

DROPOUT_STREAM = 2  # derive_seed(seed, DROPOUT_STREAM, rank) seeds each rank's global RNG

# Sections that fix what the weights mean: a resumed run must not change them.
FROZEN_SECTIONS = ("family", "data", "model", "diffusion")


def check_run_dir(run_dir: Path, *, resume: bool) -> None:
    has_state = (run_dir / "state.pt").is_file()
    if resume and not has_state:
        raise CheckpointError(f"cannot resume: '{run_dir}' holds no state.pt (not a run directory, "
                              "or its first checkpoint was never written)")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise CheckpointError(f"run directory '{run_dir}' already exists and is not empty; pass "
                              "--resume to continue it or choose another --out")


def check_resumable(saved: dict, cfg: Config) -> None:
    new = to_dict(cfg)
    for section in FROZEN_SECTIONS:
        if saved.get(section) != new.get(section):
            raise ConfigError(f"cannot resume with a different '{section}' section than the run "
                              f"was started with (saved: {saved.get(section)}, now: {new.get(section)})")


def init_weights(net, source) -> None:
    """Load ``source`` (a run directory: its EMA weights; or a .safetensors file) into ``net``:
    reflow and distillation start from the model they improve."""
    from .checkpoint import load_weights

    source = Path(source)
    file = source / "ema.safetensors" if source.is_dir() else source
    if not file.is_file():
        raise CheckpointError(f"train.init_from: '{file}' does not exist")
    load_weights({"net": net}, file)


def make_adamw(params, **options) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for these tensors (CPU since torch 2.4,
    CUDA): one call per step instead of ~10 ops per tensor (6.8 -> 1.8 ms per step for the
    1M-parameter UNet on 2 CPU cores; docs/BENCHMARKS.md), else the multi-tensor version."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, foreach=True, **options)


def prepare(cfg: Config, run_dir, *, resume=False, dist: Dist = Dist(), device=None):
    """Build a Trainer for ``cfg`` writing to ``run_dir`` (resumed from its checkpoint if asked).

    ``dist`` and ``device`` come from ``distributed.setup`` under torchrun; by default the run is
    one process on ``cfg.train.device``.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume)
    dist.barrier()  # every rank has looked at run_dir before rank 0 writes into it
    device = build.resolve_device(cfg.train.device) if device is None else device
    t = cfg.train
    micro_batch = distributed.check_batch_split(t.batch_size, dist, t.grad_accum)
    torch.manual_seed(cfg.train.seed)
    dataset = load_dataset(cfg.data.name, split="train", image_size=cfg.data.image_size,
                           channels=cfg.data.channels, skip_bad=cfg.data.skip_bad,
                           n_points=cfg.data.n_points, seed=cfg.train.seed)
    options = build.network_options(cfg, dataset.shape, dataset.num_classes)
    cfg.model.options = options
    net, path, param, objective = build.build_family(cfg, options)
    if t.init_from and not resume:
        init_weights(net, t.init_from)
    channels_last = cfg.train.channels_last and len(dataset.shape) == 3
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device=device, memory_format=memory_format)
    torch.manual_seed(derive_seed(t.seed, DROPOUT_STREAM, dist.rank))  # the weights are drawn: now per rank
    # DDP broadcasts rank 0's weights, then all-reduces gradients during backward.
    train_net = net if not dist.enabled else DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    autocast = build.autocast_dtype(t.precision, device)

    record = {"config": to_dict(cfg), "data_shape": list(dataset.shape),
              "class_names": list(dataset.class_names), "genmodels_version": __version__}
    if resume:
        saved = json.loads((run_dir / "config.json").read_text())["config"]
        check_resumable(saved, cfg)

    conditional = options.get("num_classes") is not None

    def loss(batch, generator):
        x = batch["x"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        on_device = {"x": x}
        if "noise" in batch:  # reflow pairs: the noise each x came from
            on_device["noise"] = batch["noise"].to(device).to(memory_format=memory_format) \
                if channels_last else batch["noise"].to(device)
        if conditional:  # labels feed the net only when it was built class-conditional
            on_device["y"] = batch["y"].to(device)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            return objective(train_net, on_device, generator=generator)

    optimizer = make_adamw(net.parameters(), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2),
                           weight_decay=t.weight_decay)
    ema = EMA(net, halflife_images=t.ema_halflife_images, rampup=t.ema_rampup)

    def preview(png_path):
        n = 16 if len(dataset.shape) == 3 else 2000
        x = generate(build.make_denoiser(ema.module, path, param), path, shape=dataset.shape,
                     seeds=range(n), sampler=cfg.sample.sampler, steps=min(cfg.sample.steps, 25),
                     eta=cfg.sample.eta, device=device)
        if len(dataset.shape) == 3:
            save_grid(x.clamp(-1, 1), png_path, nrow=8, scale=2)
        else:
            scatter_plot(x, png_path, reference=dataset.x[:2000])

    # The data live on the device as one tensor; each micro-batch is one index gather.
    on_device = dataclasses.replace(dataset, x=dataset.x.to(device),
                                    y=None if dataset.y is None else dataset.y.to(device),
                                    noise=None if dataset.noise is None else dataset.noise.to(device))
    shards = dist.shards(t.grad_accum)
    batches = [InfiniteBatches(on_device, micro_batch, seed=t.seed, rank=s, device=device,
                               world_size=dist.world_size * t.grad_accum) for s in shards]
    evaluate = None
    if t.eval_every_images and param is not None and dist.is_main:
        from ..metrics.protocol import proxy_evaluator

        evaluate = proxy_evaluator(cfg, dataset, lambda: build.make_denoiser(ema.module, path, param),
                                   path, device, n=t.eval_n)
    trainer = Trainer(run_dir=run_dir, cfg=t, modules={"net": net},
                      phases=[Phase("denoiser", train_net, loss, optimizer, t.grad_clip)],
                      emas={"net": ema}, batches=batches, device=device,
                      preview=preview if param is not None else None,  # a classifier draws nothing
                      generator_seed=t.seed, dist=dist, shards=shards, evaluate=evaluate)
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


__all__ = ["prepare", "train", "from_dict"]
