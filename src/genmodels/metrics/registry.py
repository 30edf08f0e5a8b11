"""The metric registry: name -> ``Metric`` (its function, the data kinds it applies to, what it
needs, its default options and a help line), read by the evaluation protocol and the CLI.

A metric's ``compute(inputs: EvalInputs, **options) -> dict`` returns one or more named values
(``prdc`` returns precision, recall, density, coverage). A new metric is one registry line:

    METRICS["brightness"] = Metric("brightness", ("image",), lambda inp: {"brightness":
        inp.samples.mean().item()}, "mean pixel value of the samples")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import ConfigError, DataError
from .classify import classifier_score, conditional_accuracy
from .frechet import fd
from .kid import kid
from .prdc import prdc
from .toy import log_density, mmd_rbf, mode_coverage, wasserstein

PRDC_K = 5


@dataclass
class EvalInputs:
    """What a metric may read for one evaluation seed. Images: ``samples`` [N, C, H, W] and, for
    metrics that need them, features of the reference set and the samples in the protocol's
    feature network (and its class logits); points: ``samples`` [N, D], ``reference`` and the toy
    ``dist``. ``labels``: the classes asked for (conditional runs). ``nll``: a callable giving
    the model's likelihood scores of the held-out items (metrics of kind "model"). Text-to-image
    runs: ``prompts``, the prompt each sample was drawn with, and ``dataset``, the run's dataset
    (which ``clip_<dataset>`` judge reads them)."""

    kind: str
    samples: torch.Tensor | None = None
    real_features: torch.Tensor | None = None
    fake_features: torch.Tensor | None = None
    fake_logits: torch.Tensor | None = None
    fd_name: str = "fd_cnn"
    labels: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    dist: object = None
    seed: int = 0
    nll: Callable[[], dict] | None = None
    reconstruction: Callable[[], dict] | None = None  # the model's reconstruction scores of held-out images
    # text-to-image runs: the prompt of each sample (``prompts.texts``), the class it names and the
    # attribute codes it states (genmodels.data.captions.Prompts), and the dataset (the judges' key)
    prompts: object = None
    dataset: str | None = None
    real: torch.Tensor | None = None  # the real images compared against (compare_images); None: the reference split


@dataclass(frozen=True)
class Metric:
    """``kinds``: the data it applies to ("image", "points"); ``needs``: "samples" (drawn from the
    model), "features" (image features), "logits" (a classifier feature network), "labels" (a
    class-conditional model), "model" (it scores the model itself: a likelihood), "reconstruction"
    (an autoencoder's reconstructions of held-out images), "prompts" (a text-to-image model: the
    prompt of each sample, in ``EvalInputs.prompts``, and the run's ``dataset``)."""

    name: str
    kinds: tuple
    compute: Callable[..., dict]
    help: str
    needs: tuple = ("samples",)
    defaults: dict = field(default_factory=dict)
    default: bool = False  # in the default set of its kinds


def _kid(inp, *, subsets=100, subset_size=1000):
    k = kid(inp.real_features, inp.fake_features, subsets=subsets, subset_size=subset_size, seed=inp.seed)
    return {"kid": k.mean, "kid_std": k.std}


def _prdc(inp, *, k=PRDC_K):
    p = prdc(inp.real_features, inp.fake_features, k=k)
    return {"precision": p.precision, "recall": p.recall, "density": p.density, "coverage": p.coverage}


def _cs(inp):
    if inp.fake_logits is None:
        raise DataError("the classifier score needs a classifier feature network (mnist, fashion, digits, emoji)")
    c = classifier_score(inp.fake_logits, splits=min(10, len(inp.fake_logits)))
    return {"cs": c.mean, "cs_std": c.std}


def _cacc(inp):
    if inp.fake_logits is None or inp.labels is None:
        raise DataError("conditional accuracy needs a class-conditional model and a classifier "
                        "feature network (mnist, fashion, digits, emoji)")
    return {"cacc": conditional_accuracy(inp.fake_logits, inp.labels)}


def _modes(inp):
    if inp.dist.modes is None:
        return {}
    m = mode_coverage(inp.samples, inp.dist.modes, inp.dist.mode_std)
    return {"modes_covered": m.covered, "modes": m.modes, "high_quality": m.high_quality}


def _loglik(inp):
    if inp.dist.log_prob is None:
        return {}
    ld = log_density(inp.dist, inp.samples)
    return {"loglik": ld.mean, "in_support": ld.in_support,
            "loglik_data": log_density(inp.dist, inp.reference).mean}  # the ceiling: real points


_FEATURES = ("samples", "features")
METRICS: dict[str, Metric] = {
    "fd_cnn": Metric("fd_cnn", ("image",), lambda inp: {inp.fd_name: fd(inp.real_features, inp.fake_features)},
                     "Frechet distance in the feature network's features (fd_cnn: the dataset CNN)",
                     _FEATURES, default=True),
    "kid": Metric("kid", ("image",), _kid, "kernel inception distance (cubic polynomial kernel, unbiased, "
                                           "subsets)", _FEATURES, {"subsets": 100, "subset_size": 1000}, True),
    "prdc": Metric("prdc", ("image",), _prdc, "precision, recall, density, coverage (k = 5 nearest neighbours)",
                   _FEATURES, {"k": PRDC_K}, True),
    "cs": Metric("cs", ("image",), _cs, "classifier score (Inception-score formula, dataset CNN)",
                 (*_FEATURES, "logits"), default=True),
    "cacc": Metric("cacc", ("image",), _cacc, "conditional accuracy: the CNN reads the class asked for",
                   (*_FEATURES, "logits", "labels")),
    "w1": Metric("w1", ("points",), lambda inp: {"w1": wasserstein(inp.reference, inp.samples, p=1)},
                 "Wasserstein-1 to fresh data (exact OT)", default=True),
    "w2": Metric("w2", ("points",), lambda inp: {"w2": wasserstein(inp.reference, inp.samples, p=2)},
                 "Wasserstein-2 to fresh data", default=True),
    "mmd": Metric("mmd", ("points",), lambda inp: {"mmd": mmd_rbf(inp.reference, inp.samples)},
                  "RBF-kernel MMD to fresh data", default=True),
    "modes": Metric("modes", ("points",), _modes, "modes covered and high-quality share (mixtures)", default=True),
    "loglik": Metric("loglik", ("points",), _loglik, "mean true log-density of the samples", default=True),
    "nll": Metric("nll", ("image", "points"), lambda inp: inp.nll(),
                  "held-out likelihood: bits/dim (images) or nats; DDPM bound, PF-ODE or IWAE by family",
                  ("model",)),
}


def _reconstruction(key):
    def compute(inp):
        scores = inp.reconstruction()
        if key not in scores:
            raise ConfigError(f"{key} does not apply to this model (it reports {', '.join(sorted(scores))})")
        return {key: scores[key]}
    return compute


for _name, _help in (("psnr", "PSNR of the reconstructions of held-out images (dB; autoencoders)"),
                     ("rfd_cnn", "rFD: fd_cnn of the reconstructions against the held-out originals"),
                     ("latent_std", "std of the posterior means of held-out images (autoencoders)"),
                     ("code_usage", "share of the codebook the held-out images use (VQ autoencoders)")):
    METRICS[_name] = Metric(_name, ("image",), _reconstruction(_name), _help, ("reconstruction",))


def _prompt_class_acc(inp):
    labels = None if inp.prompts is None else inp.prompts.labels
    if inp.fake_logits is None or labels is None:
        raise DataError("prompt_class_acc needs a text-to-image run on a labelled dataset with a classifier "
                        "feature network (mnist, fashion, emoji)")
    return {"prompt_class_acc": conditional_accuracy(inp.fake_logits, torch.as_tensor(labels))}


def _attribute_rho(inp, *, attributes=("thickness", "slant")):
    """Spearman's rho between the attribute codes each prompt states (thin < medium < thick, left
    < upright < right) and the attribute measured on its sample, per attribute and averaged."""
    from scipy.stats import spearmanr

    from ..data.captions import measure

    requested = {} if inp.prompts is None else inp.prompts.requested
    asked = [a for a in attributes if a in requested]
    if not asked:  # prompts that state none (emoji names, terse captions): nothing to score, like modes
        return {}
    measured = measure(inp.samples, inp.dataset)
    out = {}
    for a in asked:
        codes = torch.as_tensor(requested[a]).double().numpy()
        values = torch.as_tensor(measured[a]).double().numpy()
        stated = codes >= 0  # a prompt that does not state the attribute has code -1
        out[f"rho_{a}"] = float(spearmanr(codes[stated], values[stated]).statistic)
    out["attribute_rho"] = sum(out.values()) / len(out)
    return out


METRICS["prompt_class_acc"] = Metric(
    "prompt_class_acc", ("image",), _prompt_class_acc, "text-to-image: the dataset CNN reads the class the "
    "prompt names", ("samples", "features", "logits", "prompts"))
METRICS["attribute_rho"] = Metric(
    "attribute_rho", ("image",), _attribute_rho, "text-to-image (MNIST): Spearman between the thickness/slant "
    "the prompt states and the one measured on the sample", ("samples", "prompts"))


def _clip(key):
    """``key`` (clip_score | r_precision) of the samples against their prompts, by the run dataset's
    judge ``clip_<dataset>``, with its real-pair ceiling ``<key>_real`` and ``clip_judge``."""
    def compute(inp, **options):  # r_precision: others (distractors per sample)
        from .clip import score_samples

        if inp.prompts is None or inp.dataset is None:
            raise DataError(f"{key} needs a text-to-image run: the prompt of each sample and the run's dataset")
        texts = getattr(inp.prompts, "texts", inp.prompts)  # a Prompts set, or the texts themselves
        return score_samples(inp.dataset, inp.samples, texts, metrics=(key,), seed=inp.seed, **options)
    return compute


# text-to-image alignment, judged by the dataset's own contrastive model (metrics/clip.py)
METRICS["clip_score"] = Metric("clip_score", ("image",), _clip("clip_score"),
                               "CLIPScore of samples and their prompts in clip_<dataset> (100 max(cos, 0))",
                               ("samples", "prompts"))
METRICS["r_precision"] = Metric("r_precision", ("image",), _clip("r_precision"),
                                "R-precision: a sample's prompt beats 9 random others in clip_<dataset> "
                                "(chance 0.1)", ("samples", "prompts"), {"others": 9})

def _ssl(inp, *, subsets=100, subset_size=1000):
    """fd_ssl and kid_ssl: the samples against the dataset's reference split in its self-supervised
    encoder's features (metrics/ssl.py), the judge that keeps within-class variation. Datasets
    without an encoder recipe give nothing (like ``modes`` on a mixture without modes)."""
    from .features import reference_features
    from .ssl import SSL_RECIPES, ssl_feature_net

    dataset = (inp.dataset or "").removeprefix("edges:")  # image pairs make images of the underlying set
    if dataset not in SSL_RECIPES:
        return {}
    net = ssl_feature_net(dataset)
    real = (reference_features(dataset, net, progress=False) if inp.real is None
            else net.features(inp.real, convert=True))
    fake = net.features(inp.samples.clamp(-1, 1), convert=True)
    k = kid(real, fake, subsets=subsets, subset_size=min(subset_size, len(fake), len(real)), seed=inp.seed)
    return {"fd_ssl": fd(real, fake), "kid_ssl": k.mean}


METRICS["fd_ssl"] = Metric("fd_ssl", ("image",), _ssl, "Frechet distance and KID in the dataset's self-supervised "
                           "(SimCLR) encoder's features: sees malformed shapes fd_cnn's classifier features "
                           "miss (MNIST, Fashion-MNIST)", ("samples",), {"subsets": 100, "subset_size": 1000},
                           default=True)

ALIASES = {"fd": "fd_cnn", "fid": "fd_cnn", "rfd": "rfd_cnn", "kid_ssl": "fd_ssl"}


def default_metrics(kind: str, *, conditional: bool = False, text: bool = False) -> tuple[str, ...]:
    names = [m.name for m in METRICS.values() if m.default and kind in m.kinds]
    if conditional and kind == "image" and "cacc" in METRICS:
        names.append("cacc")
    if text and kind == "image":  # a text-to-image run: how well the samples follow their prompts
        names += [m.name for m in METRICS.values() if "prompts" in m.needs]
    return tuple(names)


def parse_metrics(text_or_list, *, kind: str) -> tuple[str, ...]:
    """"fd_cnn,kid" -> ("fd_cnn", "kid"), checked against the metrics of ``kind`` (image|points)."""
    names = text_or_list.split(",") if isinstance(text_or_list, str) else list(text_or_list)
    names = tuple(ALIASES.get(n.strip(), n.strip()) for n in names if n.strip())
    allowed = [m.name for m in METRICS.values() if kind in m.kinds]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown) or '(none given)'} for "
                          f"{'images' if kind == 'image' else '2-D points'}; choose from {', '.join(allowed)}")
    return names


def compute(names, inputs: EvalInputs, *, timings: dict | None = None, options: dict | None = None) -> dict:
    """The values of metrics ``names`` on ``inputs``, one flat dict; seconds per metric in
    ``timings``; ``options`` {metric: {option: value}} override a metric's defaults."""
    import time

    out = {}
    for name in names:
        metric = METRICS[name]
        start = time.perf_counter()
        out.update(metric.compute(inputs, **{**metric.defaults, **(options or {}).get(name, {})}))
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    return out


def needs(names, what: str) -> bool:
    return any(what in METRICS[n].needs for n in names)


__all__ = ["ALIASES", "EvalInputs", "METRICS", "Metric", "compute", "default_metrics", "needs", "parse_metrics"]
