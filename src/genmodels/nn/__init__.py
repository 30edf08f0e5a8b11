"""Neural network bodies: ``UNet`` for images, ``MLP`` for toy 2-D data (denoisers),
``NoisyClassifier`` (classifier guidance), and the VAEs ``MLPVAE`` and ``ConvVAE``.

``build_network(name, **kwargs)`` builds one from a config; ``NETWORKS`` is the registry.
"""

import inspect

from torch import nn

from genmodels.errors import ConfigError
from genmodels.nn.classifier import NoisyClassifier
from genmodels.nn.mlp import MLP
from genmodels.nn.unet import UNet
from genmodels.nn.vae_nets import ConvVAE, MLPVAE

NETWORKS: dict[str, type] = {"unet": UNet, "mlp": MLP, "noisy_classifier": NoisyClassifier,
                             "vae_mlp": MLPVAE, "vae_conv": ConvVAE}


def build_from(registry: dict, name: str, options: dict, *, what: str = "network") -> nn.Module:
    """Build ``registry[name](**options)``, naming ``what`` (the config field) when the name or an
    option is wrong, before the constructor sees it."""
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; choose one of {sorted(registry)}")
    cls = registry[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ConfigError(f"{what} {name!r} got unexpected argument(s) {unknown}; allowed: {allowed}")
    return cls(**options)


def build_network(name: str, **kwargs) -> nn.Module:
    """Build the network registered as ``name`` with keyword arguments ``kwargs`` (its config)."""
    return build_from(NETWORKS, name, kwargs)


__all__ = ["MLP", "NETWORKS", "ConvVAE", "MLPVAE", "NoisyClassifier", "UNet", "build_from", "build_network"]
