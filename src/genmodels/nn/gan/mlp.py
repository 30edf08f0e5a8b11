"""GAN nets for 2-D toys: ``MLPGenerator(z) -> points`` and ``MLPDiscriminator(points) -> logits``."""

from torch import nn

from genmodels.nn.gan.common import _check_labels, _linear, _positive


class MLPGenerator(nn.Module):
    """z [B, z_dim] -> points [B, dim]: ``depth`` ReLU layers of width ``hidden``."""

    def __init__(self, *, z_dim: int = 2, dim: int = 2, hidden: int = 128, depth: int = 3):
        super().__init__()
        for name, v in [("z_dim", z_dim), ("dim", dim), ("hidden", hidden), ("depth", depth)]:
            _positive(f"generator {name}", v)
        self.z_dim, self.dim, self.num_classes, self.cond_keys = z_dim, dim, None, frozenset()
        layers, width = [], z_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, z, cond=None):
        _check_labels(self, cond, z.shape[0])
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """points [B, dim] -> logits [B]; LeakyReLU(0.2), optional spectral normalisation."""

    def __init__(self, *, dim: int = 2, hidden: int = 128, depth: int = 3, spectral_norm: bool = False):
        super().__init__()
        for name, v in [("dim", dim), ("hidden", hidden), ("depth", depth)]:
            _positive(f"discriminator {name}", v)
        self.dim, self.num_classes, self.cond_keys = dim, None, frozenset()
        layers, width = [], dim
        for _ in range(depth):
            layers += [_linear(width, hidden, sn=spectral_norm), nn.LeakyReLU(0.2)]
            width = hidden
        self.net = nn.Sequential(*layers, _linear(width, 1, sn=spectral_norm))

    def forward(self, x, cond=None):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPDiscriminator expected points [B, {self.dim}], got {list(x.shape)}")
        _check_labels(self, cond, x.shape[0])
        return self.net(x).squeeze(1)
