"""TEMPORARY stub (replaced by the captions branch): terse and names styles only."""
from dataclasses import dataclass, field
from ..errors import ConfigError

@dataclass(frozen=True)
class Captions:
    texts: tuple
    labels: object
    requested: dict = field(default_factory=dict)
    style: str = ""

DIGIT_WORDS = ("zero","one","two","three","four","five","six","seven","eight","nine")

def _terse(ds, phrasing, holdout):
    if ds.name == "mnist":
        return tuple((str(int(y)), f"a {int(y)}", f"handwritten {DIGIT_WORDS[int(y)]}") for y in ds.y)
    return tuple((ds.class_names[int(y)].lower(),) for y in ds.y)

def _names(ds, phrasing, holdout):
    if not ds.captions:
        raise ConfigError(f"dataset {ds.name} has no names")
    return tuple(tuple(p.strip() for p in c.split(";") if p.strip()) for c in ds.captions)

CAPTION_STYLES = {"terse": _terse, "names": _names, "descriptive": _terse}

def caption_set(dataset, style, *, phrasing="train", holdout=True):
    return Captions(CAPTION_STYLES[style](dataset, phrasing, holdout), dataset.y, {}, style)

@dataclass(frozen=True)
class Prompts:
    texts: tuple
    labels: object
    requested: dict = field(default_factory=dict)

def prompt_set(dataset, style, *, phrasing="train", seed=0):
    c = caption_set(dataset, style, phrasing=phrasing, holdout=False)
    return Prompts(tuple(t[(seed + i) % len(t)] for i, t in enumerate(c.texts)), dataset.y, {})

def heldout_prompts(name):
    raise ConfigError("no held-out combinations in the stub")

def cycle(prompts, n):
    import torch
    idx = [i % len(prompts.texts) for i in range(n)]
    return Prompts(tuple(prompts.texts[i] for i in idx), None if prompts.labels is None else torch.as_tensor(prompts.labels)[idx], {k: v[idx] for k, v in prompts.requested.items()})

def measure(x, dataset):
    raise NotImplementedError
