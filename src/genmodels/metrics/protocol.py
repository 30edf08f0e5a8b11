"""The evaluation protocol: one pinned way to score samples, shared by every family.

- images are compared in a feature network's features (``features.py``) against the dataset's
  reference split (``REFERENCE_SPLITS``; Fashion-MNIST test 10k, all 5,000 MNIST images since
  the set is small, all 1,797 digits), whose features are cached per feature network;
- a run's samples and the reference split are fitted to the feature network by its one fixed
  conversion (``FeatureNet.prepare``); image sets a user brings only with ``convert=True``;
- a run is sampled ``n`` times per seed, sample i of seed s using seed s * 1,000,000 + i
  (EMA weights, the run's own sampler settings unless overridden), class-conditional runs asking
  for classes i mod K, and every metric is reported as mean +- std over seeds;
- likelihoods are measured on the held-out split: the DDPM bound for discrete DDPM paths, the
  probability-flow ODE on dequantized data for continuous paths (``likelihood.py``).

    result = evaluate(genmodels.load("runs/mnist"), metrics=["fd_cnn", "kid"], n=1000, seeds=[0, 1])
    scores = compare_images(real, fake, features="mnist")       # {"fd_cnn": ..., "kid": ...}
    # genmodels.evaluate("runs/mnist", ...) loads the run and calls evaluate
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import TOY_DISTRIBUTIONS, load_dataset
from ..errors import ConfigError
from .features import REFERENCE_SPLITS, FeatureNet, feature_net, feature_net_for, reference_features
from .registry import METRICS, EvalInputs, compute, default_metrics, needs, parse_metrics

__all__ = ["REFERENCE_SPLITS", "SEED_STRIDE", "reference_features", "compare_images", "evaluate", "EvalResult",
           "parse_metrics", "format_table", "METRICS"]

SEED_STRIDE = 1_000_000  # sample i of evaluation seed s uses seed s * SEED_STRIDE + i
DEFAULT_IMAGE_METRICS = default_metrics("image")


def compare_images(real, fake, *, features="mnist", metrics=DEFAULT_IMAGE_METRICS, labels=None,
                   convert=False, progress=True, metric_options=None) -> dict:
    """Scores of image tensors ``fake`` against ``real`` ([N, C, H, W] in [-1, 1]) in the
    features of ``features`` (a dataset name, a file, or a FeatureNet); plus "features": its name,
    and "converted": what was done to fit images of another shape to it (only with ``convert``;
    else they are refused), or None. ``metric_options``: {metric: {option: value}} over the
    registry's defaults, e.g. {"kid": {"subsets": 20}}."""
    metrics = parse_metrics(metrics, kind="image")
    if needs(metrics, "model"):
        raise ConfigError("nll needs a model, not a set of images; evaluate a run directory")
    net, converted = feature_net_for(features, {"real": real.shape[1:], "fake": fake.shape[1:]},
                                     convert=convert, progress=progress)
    real_f = net.features(real, convert=convert, progress=progress)
    fake_f, fake_logits = net.features_and_logits(fake, convert=convert, progress=progress)
    inputs = EvalInputs("image", samples=fake, real_features=real_f, fake_features=fake_f, fake_logits=fake_logits,
                        fd_name=f"fd_{net.tag}", labels=labels,
                        dataset=features if isinstance(features, str) else None, real=real)  # fd_ssl's encoder
    scores = compute(metrics, inputs, options=metric_options)
    return {**scores, "features": net.name, "n_real": len(real), "n_fake": len(fake), "converted": converted}


# ---- whole runs -----------------------------------------------------------------------------
@dataclass
class EvalResult:
    """Per-seed scores and their mean and std; ``protocol`` records every setting used."""

    per_seed: list
    mean: dict
    std: dict
    protocol: dict
    timings: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        """One object, metrics at the top level (means), then "std", "per_seed" and the settings."""
        return {**self.mean, "std": self.std, "per_seed": self.per_seed, **self.protocol,
                "seconds": {k: round(v, 3) for k, v in self.timings.items()}}


def summarize(per_seed: list[dict]) -> tuple[dict, dict]:
    keys = [k for k in per_seed[0] if isinstance(per_seed[0][k], (int, float))]
    mean, std = {}, {}
    for k in keys:
        values = torch.tensor([float(row[k]) for row in per_seed], dtype=torch.float64)
        mean[k] = values.mean().item()
        std[k] = values.std().item() if len(values) > 1 else 0.0
    return mean, std


def evaluate(pipe, *, run_dir=None, metrics=None, n=5000, seeds=(0, 1, 2), sampler=None, steps=None,
             eta=None, guidance=None, prompts="train", prompt_style=None, features=None, weights="ema", nll_n=64, nll_steps=None,
             nll_method=None, nll_k=None, batch_size=64, progress=True, log=True, proxy=False) -> EvalResult:
    """Sample a loaded model (any family's pipeline) per the protocol and score it by the
    ``metrics`` of the registry; appends a row to ``run_dir``'s metrics.jsonl (unless ``log`` is
    False). The likelihood (``nll``) is the pipeline's own ``nll_scores`` on ``nll_n`` held-out
    items, with its ``nll_settings`` (``nll_steps``, ``nll_method`` for diffusion, ``nll_k`` for
    VAEs).

    Text-to-image runs draw sample i with the caption of held-out item i mod N (``prompts``:
    ``train`` = a training phrasing, ``heldout`` = a phrasing never trained on, ``combinations``
    = the attribute combinations held out of training; ``genmodels.data.captions``), and are
    also scored by how well the samples follow them (clip_score, r_precision, prompt_class_acc,
    attribute_rho). ``prompt_style``: the caption style of the prompts (default: the run's own, e.g.
    descriptive prompts for a run trained on terse captions). ``guidance``: the classifier-free
    guidance scale (default: the sampler's, 1)."""
    cfg = pipe.config
    images = len(pipe.data_shape) == 3
    kind = "image" if images else "points"
    conditional = pipe.net_num_classes is not None
    text = getattr(cfg, "text", None) is not None and cfg.text.captions is not None
    metrics = parse_metrics(metrics or (*default_metrics(kind, conditional=conditional, text=text),
                                        *pipe.own_metrics), kind=kind)
    if needs(metrics, "labels") and not conditional:
        raise ConfigError("cacc (conditional accuracy) needs a class-conditional model; this one is not")
    if n < 2:
        raise ConfigError(f"n must be at least 2, got {n}")
    sampling = pipe.sample_settings(sampler=sampler, steps=steps, eta=eta)
    if guidance is not None:
        sampling["guidance"] = guidance
    if needs(metrics, "prompts") and not text:
        raise ConfigError("clip_score, r_precision, prompt_class_acc and attribute_rho score text-to-image runs "
                          "(text.captions); this run has no text")
    style = prompt_style or (cfg.text.captions if text else None)
    prompt_set = _prompts(cfg, prompts, n, style) if text else None
    if needs(metrics, "prompts") and any(m in metrics for m in ("clip_score", "r_precision")):
        protocol_judge = {"judge": f"clip_{cfg.data.name}"}  # the in-domain contrastive judge, not OpenAI's CLIP
    else:
        protocol_judge = {}
    timings = {}
    protocol = {"run": None if run_dir is None else str(run_dir), "images_seen": _images_seen(run_dir),
                "weights": weights, "n": n, "seeds": list(seeds), **sampling, "metrics": list(metrics), "proxy": proxy,
                **({"prompts": f"{prompts}: {style} captions of {len(prompt_set.texts)} "
                               f"held-out items"} if text else {}), **protocol_judge}
    nll_settings = pipe.nll_settings(nll_k=nll_k, nll_method=nll_method, nll_steps=nll_steps)
    if needs(metrics, "model"):
        protocol.update(nll_n=nll_n, **nll_settings)

    sample_metrics = [m for m in metrics if "samples" in METRICS[m].needs]
    if images and needs(sample_metrics, "features"):
        # image-to-image pairs (edges:mnist) make images of the underlying set: judge against it
        target = cfg.data.name.removeprefix("edges:")
        net, reference = _image_reference(target, features, progress)
        protocol.update(features=net.name, reference=f"{target} {REFERENCE_SPLITS.get(target)} "
                                                      f"({len(reference)} images)")
    elif sample_metrics and not images:  # toy 2-D
        dist = TOY_DISTRIBUTIONS[cfg.data.name]
        reference = load_dataset(cfg.data.name, split="test", n_points=n, seed=0).x
        protocol.update(reference=f"{cfg.data.name}: {n} fresh points (test stream, seed 0)")

    if needs(metrics, "reconstruction"):
        protocol.update(reconstruction_n=n)  # the first n held-out images (all of a smaller split)
    # deterministic (posterior means): computed once, on the first seed that asks, shared by all
    reconstruction = functools.cache(lambda: _reconstruction(pipe, n=n, progress=progress))
    per_seed = []
    for seed in seeds:
        labels = [i % pipe.net_num_classes for i in range(n)] if conditional else None
        inputs = EvalInputs(kind, labels=torch.tensor(labels) if labels else None, seed=seed,
                            nll=lambda seed=seed: _nll(pipe, nll_n=nll_n, seed=seed, progress=progress,
                                                       settings=nll_settings), reconstruction=reconstruction,
                            prompts=prompt_set, dataset=cfg.data.name)
        if sample_metrics:  # nll alone needs no samples
            start = time.perf_counter()
            asked = {} if prompt_set is None else {"prompt": list(prompt_set.texts)}
            inputs.samples = pipe.sample(n, seed=seed * SEED_STRIDE, labels=labels, batch_size=batch_size,
                                         progress=progress, **sampling, **asked)
            timings["sampling"] = timings.get("sampling", 0.0) + time.perf_counter() - start
        if images and needs(sample_metrics, "features"):
            start = time.perf_counter()
            inputs.fake_features, inputs.fake_logits = net.features_and_logits(inputs.samples, convert=True,
                                                                               progress=progress)  # own data
            inputs.real_features, inputs.fd_name = reference, f"fd_{net.tag}"
            timings["features"] = timings.get("features", 0.0) + time.perf_counter() - start
        elif sample_metrics and not images:
            inputs.reference, inputs.dist = reference, dist
        per_seed.append(compute(metrics, inputs, timings=timings))
    mean, std = summarize(per_seed)
    result = EvalResult(per_seed, mean, std, protocol, timings)
    if log and run_dir is not None:
        append_eval_row(run_dir, result)
    return result


def _image_reference(dataset, features, progress):
    if features is None:
        if dataset not in REFERENCE_SPLITS:
            raise ConfigError(f"dataset {dataset!r} has no built-in feature network or reference split; "
                              "sample it (genmodels sample RUN --n 5000 --out fake.npz) and use "
                              "genmodels eval --real DIR_OR_NPZ --fake fake.npz --features FILE")
        features = dataset
    net = features if isinstance(features, FeatureNet) else feature_net(features, progress=progress)
    if dataset not in REFERENCE_SPLITS:
        raise ConfigError(f"dataset {dataset!r} has no reference split; use genmodels eval --real/--fake")
    return net, reference_features(dataset, net, progress=progress)


PROMPT_SETS = ("train", "heldout", "combinations")


def _prompts(cfg, which: str, n: int, style: str):
    """The prompts of ``n`` samples (``genmodels.data.captions.Prompts``): the held-out split's
    captions cycled (``train`` / ``heldout`` phrasings), or the held-out attribute combinations."""
    from ..data.captions import cycle, heldout_prompts, prompt_set

    if which not in PROMPT_SETS:
        raise ConfigError(f"prompts must be one of {', '.join(PROMPT_SETS)}, got {which!r}")
    if which == "combinations":
        return cycle(heldout_prompts(cfg.data.name, phrasing="train"), n)  # only the combination is new
    test = load_dataset(cfg.data.name, split="test", image_size=cfg.data.image_size, channels=cfg.data.channels)
    return cycle(prompt_set(test, style, phrasing=which, seed=0), n)


def _nll(pipe, *, nll_n, seed, progress, settings) -> dict:
    """The pipeline's likelihood scores of the first ``nll_n`` held-out items (with their
    conditioning), the randomness (dequantization, probes) seeded by ``seed``."""
    cfg = pipe.config
    g = torch.Generator().manual_seed(seed)
    if len(pipe.data_shape) == 3:
        test = load_dataset(cfg.data.name, split="test", image_size=cfg.data.image_size, channels=cfg.data.channels)
    else:
        test = load_dataset(cfg.data.name, split="test", n_points=nll_n, seed=0)
    cond = {k: v[:nll_n] for k, v in test.conditions().items()}
    return pipe.nll_scores(test.x[:nll_n], cond=cond, generator=g, progress=progress, **settings)


def _reconstruction(pipe, *, n, progress) -> dict:
    """The pipeline's reconstruction scores of the first ``n`` held-out images."""
    cfg = pipe.config
    test = load_dataset(cfg.data.name, split="test", image_size=cfg.data.image_size, channels=cfg.data.channels)
    return pipe.reconstruction_scores(test.x[:n], progress=progress)


def _images_seen(run_dir):
    if run_dir is None:
        return None
    from ..report import read_metrics

    rows = [r for r in read_metrics(run_dir) if "loss" in r and "images" in r]
    return rows[-1]["images"] if rows else None


def append_eval_row(run_dir, result: EvalResult) -> None:
    row = {"eval": "proxy" if result.protocol.get("proxy") else "full", "images": result.protocol["images_seen"],
           **result.mean, "std": result.std,
           **{k: result.protocol[k] for k in ("features", "reference", "n", "seeds", "sampler", "steps")
              if k in result.protocol}}
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def format_table(mean: dict, std: dict | None = None) -> str:
    """Plain text: one metric a line, mean +- std when a std is given."""
    lines = []
    width = max((len(k) for k in mean), default=0)
    for key, value in mean.items():
        s = (std or {}).get(key)
        text = _fmt(value) + (f" +- {_fmt(s)}" if s else "")
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e6):
        return str(int(v))
    return f"{v:.4g}" if math.isfinite(v) else str(v)


# ---- the trainer's proxy evaluation ----------------------------------------------------------
PROXY_SEED = 10**9  # proxy samples use seeds PROXY_SEED + i: the same images at every row


def proxy_evaluator(cfg, dataset, draw, *, n):
    """A callable for the trainer's ``evaluate`` hook, or None where no cheap judge exists.

    Each call draws ``n`` samples with ``draw(seeds, labels)`` (the family's sampler on the
    current EMA weights) with fixed seeds, and returns a small "proxy" row: fd_cnn and KID
    against the reference split for built-in image sets, W2 and MMD for toy sets. The feature
    network and reference features are built here, before training, so no row stalls on them.
    """
    images = dataset.kind == "image"
    if images and cfg.data.name not in REFERENCE_SPLITS:
        return None
    if images:
        net = feature_net(cfg.data.name)
        reference = reference_features(cfg.data.name, net)
    else:
        reference = load_dataset(cfg.data.name, split="test", n_points=n, seed=0).x
    labels = [i % dataset.num_classes for i in range(n)] if cfg.model.options.get("num_classes") else None

    def evaluate() -> dict:
        start = time.perf_counter()
        x = draw(range(PROXY_SEED, PROXY_SEED + n), labels)
        if images:
            inputs = EvalInputs("image", real_features=reference, fake_features=net.features(x.clamp(-1, 1), convert=True),
                                fd_name=f"fd_{net.tag}")
            scores = compute(["fd_cnn", "kid"], inputs, options={"kid": {"subsets": 20, "subset_size": min(n, 1000)}})
            scores.pop("kid_std")  # over 20 subsets of one small draw: not worth a column
        else:
            scores = compute(["w2", "mmd"], EvalInputs("points", samples=x, reference=reference))
        return {"eval": "proxy", "n": n, **scores, "eval_s": round(time.perf_counter() - start, 2)}

    return evaluate
