"""LoRA adapter files: a safetensors file in peft's layout (``base_model.model.<module>.lora_A.weight``
and ``.lora_B.weight``; peft's ``LoraConfig`` fields as JSON under the ``adapter_config`` metadata
key) plus our own metadata under ``genmodels``: the base run, the sha256 of the base weights file
the adapter was trained on, rank, alpha and the target patterns. Loading one onto a run whose
weights hash differs is refused: the delta only means something on the weights it was learnt on.

    >>> pipe = genmodels.load("runs/mnist", lora=[("a.safetensors", 0.8), ("b.safetensors", 0.5)])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import CheckpointError, ConfigError
from .nn.lora import LoraWeight, merge_weights
from .train.checkpoint import atomic_write

PEFT_PREFIX = "base_model.model."  # peft's key prefix for a model wrapped by get_peft_model


@dataclass(frozen=True)
class AdapterFile:
    """An adapter file read back: ``adapters`` {module name: LoraWeight}, ``meta`` our metadata
    (``base``, ``base_weights``, ``base_sha256``, ``rank``, ``alpha``, ``targets``), ``peft_config``."""

    path: Path
    adapters: dict
    meta: dict
    peft_config: dict


def peft_config(adapters: dict, *, rank: int, alpha: float, base: str) -> dict:
    """peft's ``LoraConfig`` fields for ``adapters``: the exact module names as ``target_modules``."""
    return {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base, "revision": None,
            "inference_mode": True, "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
            "fan_in_fan_out": False, "target_modules": sorted(adapters), "modules_to_save": None,
            "init_lora_weights": True, "use_rslora": False, "use_dora": False, "rank_pattern": {},
            "alpha_pattern": {}, "layers_to_transform": None, "layers_pattern": None}


def save_adapter(adapters: dict, path, *, meta: dict) -> Path:
    """Write ``adapters`` {module name: LoraWeight} to ``path`` (plus ``adapter_config.json`` next
    to it, peft's directory layout when named adapter_model.safetensors); ``meta`` as above."""
    path = Path(path)
    state = {}
    for name, adapter in adapters.items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = adapter.lora_A.detach().cpu().contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = adapter.lora_B.detach().cpu().contiguous()
    config = peft_config(adapters, rank=meta["rank"], alpha=meta["alpha"], base=meta["base"])
    metadata = {"format": "pt", "adapter_config": json.dumps(config), "genmodels": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    atomic_write(path.parent / "adapter_config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
    return path


def read_adapter(path) -> AdapterFile:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"LoRA adapter file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"'{path}' is not a readable safetensors file ({err})") from None
    if "genmodels" not in metadata or "adapter_config" not in metadata:
        raise CheckpointError(f"'{path}' is not a genmodels LoRA adapter (no genmodels/adapter_config metadata)")
    meta, config = json.loads(metadata["genmodels"]), json.loads(metadata["adapter_config"])
    adapters = {}
    for name in config["target_modules"]:
        keys = [f"{PEFT_PREFIX}{name}.lora_{part}.weight" for part in "AB"]
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise CheckpointError(f"LoRA adapter '{path}' lists '{name}' in its config but holds no {missing[0]}")
        a, b = (tensors[k] for k in keys)
        adapter = LoraWeight((b.shape[0], *a.shape[1:]), rank=config["r"], alpha=config["lora_alpha"])
        adapter.lora_A.data.copy_(a)
        adapter.lora_B.data.copy_(b)
        adapters[name] = adapter.requires_grad_(False)
    return AdapterFile(path, adapters, meta, config)


def by_module(adapters: dict) -> dict[str, dict]:
    """{"net.mid.attn.qkv": a} -> {"net": {"mid.attn.qkv": a}}: the adapters of each run module."""
    grouped = {}
    for name, adapter in adapters.items():
        module, _, rest = name.partition(".")
        grouped.setdefault(module, {})[rest] = adapter
    return grouped


def parse_spec(text: str) -> tuple[str, float]:
    """``"a.safetensors:0.8"`` -> ("a.safetensors", 0.8); no ``:WEIGHT``: weight 1."""
    path, sep, weight = text.rpartition(":")
    if not sep:
        return text, 1.0
    try:
        return path, float(weight)
    except ValueError:
        return text, 1.0  # a ':' in the path itself


def apply_adapters(modules: dict, specs, *, weights_sha256: dict, run_dir) -> list[AdapterFile]:
    """Merge each ``(file, weight)`` (or ``"file:weight"``, or a Path: weight 1) of ``specs`` into ``modules`` ({name: nn.Module} of a loaded
    run whose weights files hash to ``weights_sha256`` {file name: sha256}): refused with one line
    when an adapter was trained on other weights."""
    files = []
    for spec in specs:
        path, weight = parse_spec(spec) if isinstance(spec, str) else (spec, 1.0) if isinstance(spec, Path) else spec
        adapter = read_adapter(path)
        meta = adapter.meta
        if weights_sha256.get(meta["base_weights"]) != meta["base_sha256"]:
            raise CheckpointError(f"LoRA adapter '{path}' was trained on {meta['base']} ({meta['base_weights']} "
                                  f"sha256 {meta['base_sha256'][:12]}...), not on the weights of '{run_dir}'")
        grouped = by_module(adapter.adapters)
        for module, layers in grouped.items():
            if module not in modules:
                raise ConfigError(f"LoRA adapter '{path}' adapts '{module}.{next(iter(layers))}', but '{run_dir}' has "
                                  f"no module '{module}'")
        for module, layers in grouped.items():
            merge_weights(modules[module], layers, multiplier=weight)
        files.append(adapter)
    return files


__all__ = ["AdapterFile", "PEFT_PREFIX", "apply_adapters", "by_module", "parse_spec", "peft_config", "read_adapter", "save_adapter"]
