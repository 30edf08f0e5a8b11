"""One load seam for every family: a run directory -> its modules (``load_run``) -> its
family's pipeline (``load``); and the composed-run records (the frozen runs a run builds on).

A run directory holds config.json (``{"config", "data_shape", "class_names", "genmodels_version",
"bases"}``), model.safetensors and ema.safetensors. ``bases`` maps each config field of
``RUN_REFERENCES`` that names a run (``model.base``, ``latent.autoencoder``) to that run's path
and the sha256 of its weights files when this run was trained; loading checks both, and a
missing or changed base fails with one line naming it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .. import build
from ..config import from_dict
from ..errors import CheckpointError, ConfigError
from ..train.checkpoint import check_weights_file, check_weights_files, load_weights
from .base import FAMILIES, RUN_REFERENCES, LoadedRun

WEIGHT_FILES = {"ema": "ema.safetensors", "model": "model.safetensors"}

# Models from elsewhere: ``load("PREFIX:LOCATION")`` -> SOURCES[PREFIX](LOCATION, device=...), a
# pipeline of the same contract (``genmodels.interop`` registers "diffusers"). Registered by the
# code that reads them, so this seam imports none of it.
SOURCES: dict = {}


def get_family(name: str):
    if name not in FAMILIES:
        raise ConfigError(f"unknown family {name!r}; choose one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def read_run_config(run_dir) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory '{run_dir}' does not exist")
    path = run_dir / "config.json"
    diffusers_hint = f"'{run_dir}' is a diffusers model folder, not a genmodels run; load it as diffusers:{run_dir}"
    if not path.is_file():
        if (run_dir / "model_index.json").is_file():
            raise CheckpointError(diffusers_hint)
        raise CheckpointError(f"'{run_dir}' is not a genmodels run directory: config.json is missing")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if isinstance(record, dict) and "_diffusers_version" in record:
        raise CheckpointError(diffusers_hint)
    return record


# ---- composed runs ----------------------------------------------------------------------------
def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_references(cfg) -> dict[str, str]:
    """{config field: run directory} of every run ``cfg`` builds on (``RUN_REFERENCES`` set)."""
    out = {}
    for dotted in RUN_REFERENCES:
        section, key = dotted.split(".", 1)
        owner = getattr(cfg, section, None)
        value = getattr(owner, key, None) if owner is not None else None
        if value:
            out[dotted] = str(value)
    return out


def base_record(run_dir) -> dict:
    """What config.json records of a base run: its resolved path, family and weights' sha256."""
    run_dir = Path(run_dir)
    record = read_run_config(run_dir)
    hashes = {name: file_sha256(run_dir / name) for name in WEIGHT_FILES.values() if (run_dir / name).is_file()}
    if not hashes:
        raise CheckpointError(f"base run '{run_dir}' has no weights (model.safetensors / ema.safetensors)")
    return {"path": str(run_dir.resolve()), "family": record["config"]["family"], "sha256": hashes}


def check_base(field: str, recorded: dict, *, run_dir) -> Path:
    """The base run's directory after checking it is where, and what, ``recorded`` says."""
    path = Path(recorded["path"])
    if not (path / "config.json").is_file():
        raise CheckpointError(f"'{run_dir}' builds on the run {path} ({field}), which is missing; restore it "
                              f"there or retrain this run")
    for name, digest in recorded["sha256"].items():
        if not (path / name).is_file() or file_sha256(path / name) != digest:
            raise CheckpointError(f"'{run_dir}' builds on the run {path} ({field}), whose {name} changed since "
                                  f"this run was trained (sha256 {digest[:12]}... expected); restore that run "
                                  f"or retrain this one")
    return path


def load_bases(record: dict, run_dir, *, device, weights="ema") -> dict:
    """The base runs a run's record names, checked and loaded (frozen) on ``device``."""
    return {field: load_run(check_base(field, recorded, run_dir=run_dir), device=device, weights=weights)
            for field, recorded in record.get("bases", {}).items()}


# ---- loading ----------------------------------------------------------------------------------
def load_run(run_dir, *, device="auto", weights="ema", family=None, channels_last=True) -> LoadedRun:
    """Rebuild a run directory's modules (its family's ``build``) with ``weights`` loaded, on
    ``device``, frozen for inference, with the runs it builds on (checked: path and sha256).
    ``family``: refuse runs of any other family."""
    run_dir = Path(run_dir)
    record = read_run_config(run_dir)
    saved = record["config"]
    if saved.get("family") == "gan" and saved.get("model", {}).get("network") == "unet":
        saved = {**saved, "family": "pix2pix"}  # Pix2Pix runs from before it became its own family
    cfg = from_dict(saved)
    if family is not None and cfg.family != family:
        hint = "load it with genmodels.load_classifier / --classifier" if cfg.family == "classifier" else \
            "load it with genmodels.load"
        raise ConfigError(f"'{run_dir}' holds a {cfg.family} run, not a {family}; {hint}")
    if weights not in WEIGHT_FILES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_FILES)}, got '{weights}'")
    device = device if isinstance(device, torch.device) else build.resolve_device(device)
    check_weights_files(run_dir / name for name in WEIGHT_FILES.values())  # damaged ones, read or not
    bases = load_bases(record, run_dir, device=device)
    modules = get_family(cfg.family).build(cfg, cfg.model.options)
    if weights == "ema":  # modules without an EMA (a GAN's discriminator) keep their raw weights
        averaged = {k.split(".", 1)[0] for k in check_weights_file(run_dir / WEIGHT_FILES["ema"])}
        load_weights({k: m for k, m in modules.items() if k in averaged}, run_dir / WEIGHT_FILES["ema"])
        rest = {k: m for k, m in modules.items() if k not in averaged}
        if rest:
            load_weights(rest, run_dir / WEIGHT_FILES["model"])
    else:
        load_weights(modules, run_dir / WEIGHT_FILES[weights])
    # The memory format the run trained in: convolutions round differently in channels_last,
    # and sampling in the same format keeps samples bit-identical to the trainer's previews.
    images = len(record["data_shape"]) == 3
    memory_format = torch.channels_last if channels_last and cfg.train.channels_last and images \
        else torch.contiguous_format
    for module in modules.values():
        module.to(device=device, memory_format=memory_format).eval().requires_grad_(False)
    return LoadedRun(run_dir, record, cfg, modules, device, bases)


def load(run_dir, *, device="auto", weights="ema", lora=()):
    """Rebuild a trained model from ``run_dir`` (config.json + safetensors): its family's
    pipeline, with ``sample(n, seed=)`` for every family. ``lora``: LoRA adapter files merged into
    its weights first, each ``(path, weight)`` or ``"path:weight"`` (``genmodels.lora``), refused
    when trained on other weights than these. ``"PREFIX:LOCATION"`` loads a model from elsewhere
    (``SOURCES``: ``diffusers:FOLDER``, a diffusers UNet2DModel saved with ``save_pretrained``)."""
    prefix, sep, location = str(run_dir).partition(":")
    if sep and prefix in SOURCES:
        if lora:
            raise ConfigError(f"LoRA adapters are trained on genmodels runs; '{run_dir}' is a {prefix} model")
        return SOURCES[prefix](location, device=device)
    run = load_run(run_dir, device=device, weights=weights)
    if lora:
        from ..lora import apply_adapters

        weights_file = Path(run_dir) / WEIGHT_FILES[weights]
        apply_adapters(run.modules, lora, weights_sha256={weights: file_sha256(weights_file)}, run_dir=run_dir)
    return get_family(run.config.family).load(run)


__all__ = ["SOURCES", "WEIGHT_FILES", "base_record", "check_base", "file_sha256", "get_family", "load", "load_bases",
           "load_run", "read_run_config", "run_references"]
