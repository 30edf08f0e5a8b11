"""A self-supervised judge: features of a contrastive (SimCLR) encoder trained per dataset.

Why a second feature network: the dataset CNN (``features.py``) is a classifier, and a classifier
trained to 98 % collapses the variation within a class in its penultimate layer. A malformed but
still classifiable digit then lands next to clean ones, so fd_cnn ranks a sampler whose digits a
person sees as clearly worse as equal (docs/EVALUATION.md, "A judge that sees malformed shapes").
An encoder trained to tell every training image apart from every other one (instance
discrimination, Chen et al. 2020), with only mild geometric augmentations as the views, must keep
what makes one image differ from another of its class: stroke shape, thickness, closure. It is
blind only to what the augmentations vary (small shifts, rotations, scalings).

The encoder is ``FeatureCNN``'s body (two conv stages and a 128-unit layer, the features), trained
with the NT-Xent loss through a 2-layer projection head that is dropped afterwards (the layer
before the head keeps more information, Chen et al. Sec. 4.2). Trained deterministically on the
dataset's training split and cached as safetensors beside the CNN (``ssl_feature_net``).
Distances in it are named ``fd_ssl`` / ``kid_ssl``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import InfiniteBatches
from ..errors import DataError
from ..paths import cache_dir
from ..progress import progress_bar
from .features import (FeatureCNN, FeatureNet, Recipe, _load_cnn, _save, _train_subset, data_hash, random_affine,
                       weights_hash)

__all__ = ["SSL_RECIPES", "SslRecipe", "build_ssl_encoder", "ssl_feature_net", "ssl_path", "nt_xent"]

SSL_VERSION = 1  # bump when the encoder or a recipe changes: old cache files are then ignored


@dataclass(frozen=True)
class SslRecipe:
    """SimCLR on the first ``max_images`` training images: ``epochs`` of batches of ``batch_size``
    images, two augmented views each (random affine: ``shift`` pixels, ``rotate`` degrees, relative
    ``scale``), NT-Xent at ``temperature``, Adam with cosine decay."""

    epochs: int = 30
    width: int = 32
    feature_dim: int = 128
    projection_dim: int = 64
    lr: float = 2e-3
    batch_size: int = 256
    temperature: float = 0.2
    shift: float = 2.0
    rotate: float = 10.0
    scale: float = 0.1
    fill: float = -1.0
    max_images: int | None = None
    seed: int = 0

    def augmentation(self) -> Recipe:
        return Recipe(epochs=0, shift=self.shift, rotate=self.rotate, scale=self.scale, fill=self.fill)


SSL_RECIPES = {
    "mnist": SslRecipe(),
    "fashion": SslRecipe(epochs=4, max_images=20_000, shift=2, rotate=5),
}


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalized-temperature cross entropy: each view's positive is the other view of
    its image, its negatives the 2B - 2 other views in the batch."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = len(z1)
    sim.fill_diagonal_(float("-inf"))  # a view is not its own positive
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def ssl_path(dataset: str):
    return cache_dir() / "features" / f"{dataset}-ssl-v{SSL_VERSION}.safetensors"


def _ssl_subset(dataset: str, recipe: SslRecipe):
    """The training images a recipe uses (labels dropped: the encoder never sees them)."""
    train = _train_subset(dataset)
    n = recipe.max_images or len(train)
    return type(train)(train.name, train.x[:n], None, train.class_names, train.kind)


def build_ssl_encoder(dataset: str, *, recipe: SslRecipe | None = None, progress=True) -> tuple[FeatureCNN, dict]:
    """Train ``dataset``'s contrastive encoder by its recipe; returns it (a FeatureCNN whose
    ``features`` are the encoder's output; its classifier head is unused) and its info."""
    if recipe is None and dataset not in SSL_RECIPES:
        raise DataError(f"no self-supervised judge recipe for dataset {dataset!r}; built-in: {', '.join(SSL_RECIPES)}")
    recipe = recipe or SSL_RECIPES[dataset]
    start = time.perf_counter()
    train = _ssl_subset(dataset, recipe)
    torch.manual_seed(recipe.seed)
    c, h, _ = train.shape
    net = FeatureCNN(in_channels=c, image_size=h, num_classes=1, width=recipe.width, feature_dim=recipe.feature_dim)
    head = nn.Sequential(nn.Linear(recipe.feature_dim, recipe.feature_dim), nn.ReLU(),
                         nn.Linear(recipe.feature_dim, recipe.projection_dim))
    opt = torch.optim.Adam([*net.body.parameters(), *head.parameters()], lr=recipe.lr)
    batches = InfiniteBatches(train, min(recipe.batch_size, len(train)), seed=recipe.seed)
    steps = max(1, recipe.epochs * batches.batches_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    augment, rng = recipe.augmentation(), torch.Generator().manual_seed(recipe.seed + 1)
    net.train()
    last = float("nan")
    bar = progress_bar(range(steps), desc=f"training the {dataset} self-supervised judge", disable=not progress,
                       leave=False, mininterval=1.0)
    for _ in bar:
        x = next(batches)["x"]
        views = random_affine(torch.cat([x, x]), augment, generator=rng)  # two independent views per image
        z = head(net.features(views))
        loss = nt_xent(z[:len(x)], z[len(x):], recipe.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        last = loss.item()
    net.eval()
    info = {"dataset": dataset, "kind": "ssl", "final_loss": last, "n_train": len(train),
            "data_sha256": data_hash(train), "recipe": recipe.__dict__, "version": SSL_VERSION,
            "config": net.config, "train_seconds": round(time.perf_counter() - start, 1)}
    return net, info


def _load_or_build(dataset: str, rebuild: bool, progress: bool) -> tuple[FeatureCNN, dict]:
    """The cached encoder when it matches the recipe's data, else trained now and cached."""
    path = ssl_path(dataset)
    recipe = SSL_RECIPES[dataset]
    if path.is_file() and not rebuild:
        try:
            net, info = _load_cnn(path)
            if info.get("data_sha256") == data_hash(_ssl_subset(dataset, recipe)) and info.get("recipe") == recipe.__dict__:
                return net, info
        except DataError:  # a damaged cache file costs only a rebuild
            pass
    net, info = build_ssl_encoder(dataset, progress=progress)
    try:
        _save(net, info, path)
    except OSError as err:  # an unwritable cache only costs retraining next time
        info["cache_error"] = str(err)
    return net, info


def ssl_feature_net(dataset: str, *, rebuild=False, progress=True) -> FeatureNet:
    """The cached contrastive encoder of ``dataset`` as a FeatureNet (tag ``ssl``: ``fd_ssl``),
    trained on first use (SSL_RECIPES; docs/EVALUATION.md gives its cost)."""
    if dataset not in SSL_RECIPES:
        raise DataError(f"no self-supervised judge recipe for dataset {dataset!r}; built-in: {', '.join(SSL_RECIPES)}")
    net, info = _load_or_build(dataset, rebuild, progress)
    c, s = net.config["in_channels"], net.config["image_size"]
    return FeatureNet(f"{dataset}-SSL", net, image_shape=(c, s, s), forward_features=net.features,
                      info={**info, "weights_sha256": weights_hash(net)}, tag="ssl")
