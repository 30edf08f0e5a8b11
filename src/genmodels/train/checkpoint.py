"""Run-directory files, each written to a temporary name and renamed, so a kill mid-save leaves
the previous file intact. Weights are safetensors (no pickle); ``state.pt`` holds only tensors and
plain Python values, so it loads with ``torch.load(weights_only=True)``."""

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError


def atomic_write(path, write) -> None:
    """Call ``write(tmp_path)`` then rename tmp_path onto ``path`` (same directory, same disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; run files are as readable as any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_json(obj, path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def flat_state(modules: dict) -> dict:
    """{"net": module} -> {"net.layer.weight": tensor, ...}, contiguous CPU tensors for safetensors."""
    out = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
    return out


def save_weights(modules: dict, path) -> None:
    state = flat_state(modules)
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def check_weights_file(path) -> list[str]:
    """The tensor names in safetensors file ``path``, read from its header without the tensors.
    A missing, truncated or foreign file is a CheckpointError naming it: safetensors checks that
    the header parses and that its tensors cover the file exactly, so a cut anywhere shows here."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file '{path}' is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from None


def check_weights_files(paths) -> None:
    """``check_weights_file`` for each of ``paths`` that exists: a damaged file is reported even
    when the caller is about to read another one."""
    for path in paths:
        if Path(path).exists():
            check_weights_file(path)


def load_weights(modules: dict, path) -> None:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file '{path}' is missing")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from None
    for name, module in modules.items():
        prefix = name + "."
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"'{path}' does not match the network built from config.json "
                f"(missing: {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected: {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")


def _unreadable(path, err) -> CheckpointError:
    if isinstance(err, SafetensorError):
        return CheckpointError(f"{path} is damaged (truncated or not a safetensors file: {_reason(err)}); "
                               "restore it from a copy or retrain")
    return CheckpointError(f"cannot read {path} ({_reason(err)}); check that it is readable")


def _reason(err) -> str:
    """The first sentence of an exception's message (torch's run on for a paragraph), after its
    type where the message alone does not say what failed (KeyError: 101)."""
    lines = str(err).strip().splitlines()
    text = lines[0].split(". ")[0].rstrip(".") if lines else ""
    if isinstance(err, SafetensorError) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def save_state(state: dict, path) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state '{path}' is missing; cannot resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch reports damage as RuntimeError, OSError, EOFError, KeyError, UnpicklingError ...
        raise CheckpointError(f"{path} is damaged (truncated or not a torch.save file: {_reason(err)}); "
                              "restore it from a copy to resume, or start a new run with another --out") from None
