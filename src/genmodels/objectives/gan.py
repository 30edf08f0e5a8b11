"""GAN objectives: the discriminator's and the generator's per-sample losses, and their
regularisers. ``GANObjective.d_loss`` and ``.g_loss`` are the two Phases of the shared trainer.

Losses on logits r = D(x_real), f = D(G(z)) (patch logits are averaged per sample):

| loss            | D minimises                      | G minimises             | paper                       |
|-----------------|----------------------------------|-------------------------|-----------------------------|
| minimax         | -log s(r) - log(1 - s(f))        | log(1 - s(f))           | Goodfellow et al. 2014, Eq. 1 (saturating) |
| non_saturating  | same                             | -log s(f)               | Goodfellow et al. 2014, sec. 3 |
| lsgan           | (r - 1)^2 / 2 + f^2 / 2          | (f - 1)^2 / 2           | Mao et al. 2017, Eq. 9 (a=0, b=c=1) |
| wgan            | f - r                            | -f                      | Arjovsky et al. 2017; + GP: Gulrajani et al. 2017, Eq. 3 |
| hinge           | relu(1 - r) + relu(1 + f)        | -f                      | Lim & Ye 2017; Miyato et al. 2018 |

with s the sigmoid; -log s(r) = softplus(-r) and log(1 - s(f)) = -softplus(f) keep them stable.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cond import as_cond, null_value, select, where
from ..errors import ConfigError

__all__ = ["LOSSES", "d_loss", "g_loss", "gradient_penalty", "r1_penalty", "diff_augment",
           "AUGMENTS", "truncated_normal", "GANObjective"]


def _per_sample(v: Tensor) -> Tensor:
    return v.flatten(1).mean(1) if v.ndim > 1 else v


_D = {
    "minimax": lambda r, f: F.softplus(-r) + F.softplus(f),
    "non_saturating": lambda r, f: F.softplus(-r) + F.softplus(f),
    "lsgan": lambda r, f: 0.5 * (r - 1).square() + 0.5 * f.square(),
    "wgan": lambda r, f: f - r,
    "hinge": lambda r, f: F.relu(1 - r) + F.relu(1 + f),
}
_G = {
    "minimax": lambda f: -F.softplus(f),
    "non_saturating": lambda f: F.softplus(-f),
    "lsgan": lambda f: 0.5 * (f - 1).square(),
    "wgan": lambda f: -f,
    "hinge": lambda f: -f,
}
LOSSES = tuple(_D)


def _check_loss(kind):
    if kind not in _D:
        raise ConfigError(f"gan.loss {kind!r} is unknown; allowed: {', '.join(LOSSES)}")


def d_loss(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's loss per sample [B] (the table above)."""
    _check_loss(kind)
    return _per_sample(_D[kind](real_logits.float(), fake_logits.float()))


def g_loss(kind: str, fake_logits: Tensor) -> Tensor:
    """The generator's loss per sample [B]."""
    _check_loss(kind)
    return _per_sample(_G[kind](fake_logits.float()))


def _input_grad(critic, x: Tensor) -> Tensor:
    """d sum(critic(x)) / dx, kept in the graph so the penalty trains D (double backprop)."""
    x = x.detach().requires_grad_(True)
    out = critic(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.flatten(1)


def gradient_penalty(critic, real: Tensor, fake: Tensor, *, generator=None) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017, Eq. 3): (||grad_x D(x_hat)||_2 - 1)^2 at x_hat = eps real +
    (1 - eps) fake, eps ~ U(0, 1) per sample. ``critic``: x -> logits. Returns [B]."""
    eps = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), generator=generator, device=real.device,
                     dtype=real.dtype)
    x_hat = torch.lerp(fake.detach(), real.detach(), eps)
    return (_input_grad(critic, x_hat).norm(dim=1) - 1).square()


def r1_penalty(critic, real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018, Eq. 9 without gamma / 2): ||grad_x D(x_real)||^2 per sample [B]."""
    return _input_grad(critic, real).square().sum(1)


# ---- DiffAugment (Zhao et al. 2020), for images in [-1, 1] ----------------------------------
def _rand(x, generator, *shape):
    return torch.rand((x.shape[0],) + shape, generator=generator, device=x.device, dtype=x.dtype)


def _color(x, generator):
    x = x + (_rand(x, generator, 1, 1, 1) - 0.5)  # brightness
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (_rand(x, generator, 1, 1, 1) * 2) + mean  # saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, generator, 1, 1, 1) + 0.5) + mean  # contrast


def _translation(x, generator, ratio=0.125):
    """Shift by up to ratio * size pixels per sample, zero-filled: an index gather, so the
    gradient flows to every pixel that stays in view."""
    B, _, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    tx = torch.randint(-sh, sh + 1, (B, 1, 1), generator=generator, device=x.device)
    ty = torch.randint(-sw, sw + 1, (B, 1, 1), generator=generator, device=x.device)
    b, gx, gy = torch.meshgrid(torch.arange(B, device=x.device), torch.arange(H, device=x.device),
                               torch.arange(W, device=x.device), indexing="ij")
    gx = (gx + tx + 1).clamp(0, H + 1)
    gy = (gy + ty + 1).clamp(0, W + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
    return padded[b, gx, gy].permute(0, 3, 1, 2)


def _cutout(x, generator, ratio=0.5):
    """Zero one square of side ratio * size at a random place per sample."""
    B, _, H, W = x.shape
    ch, cw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    ox = torch.randint(0, H + (1 - ch % 2), (B, 1, 1), generator=generator, device=x.device)
    oy = torch.randint(0, W + (1 - cw % 2), (B, 1, 1), generator=generator, device=x.device)
    rx = torch.arange(H, device=x.device)[None, :, None] - (ox - ch // 2)
    ry = torch.arange(W, device=x.device)[None, None, :] - (oy - cw // 2)
    inside = (rx >= 0) & (rx < ch) & (ry >= 0) & (ry < cw)
    return x * (~inside)[:, None].to(x.dtype)


AUGMENTS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(x: Tensor, policy, *, generator=None) -> Tensor:
    """DiffAugment (Zhao et al. 2020, Alg. 1): differentiable augmentations applied to every image
    D sees, real and fake, in both phases, so G's gradient passes through them and D cannot
    memorise the few real images. ``policy``: names from AUGMENTS, e.g. ("color", "translation")."""
    for name in policy:
        if name not in AUGMENTS:
            raise ConfigError(f"gan.diffaugment {name!r} is unknown; allowed: {', '.join(AUGMENTS)}")
        x = AUGMENTS[name](x, generator)
    return x


def truncated_normal(shape, *, threshold: float | None, generator=None, device="cpu") -> Tensor:
    """z ~ N(0, I) with every entry |z| > threshold redrawn (BigGAN's truncation trick, Brock et al.
    2019, sec. 3.1): smaller threshold, higher fidelity, less variety. None: plain N(0, I)."""
    z = torch.randn(shape, generator=generator, device=device)
    if threshold is None:
        return z
    if threshold <= 0:
        raise ValueError(f"truncation threshold must be positive, got {threshold}")
    while True:
        outside = z.abs() > threshold
        if not outside.any():
            return z
        z = torch.where(outside, torch.randn(shape, generator=generator, device=device), z)


# ---- the objective --------------------------------------------------------------------------
@dataclass
class GANObjective:
    """The two phases' losses.

    The batch's ``cond`` reaches G as ``G(z, cond)`` and D as ``D(x, cond)``, each given the keys
    it reads (``g_keys``, ``d_keys``: the nets' ``cond_keys``): labels for a class-conditional
    GAN, the input image for Pix2Pix, whose G takes no z (``takes_z=False``) and adds
    ``l1_weight`` |G(cond) - x|_1 (Isola et al. 2017, Eq. 4).
    ``gp_weight``: WGAN-GP's lambda; ``r1_gamma``: R1's gamma (the penalty is gamma / 2 R1);
    ``style_mixing``: probability of a two-z mixed batch (generators with ``num_ws``).
    ``cond_dropout``: per key, the probability that a sample's value is replaced by the nets' null
    (their learned null text: a text GAN then also draws for an empty prompt); the same samples
    are dropped for G and D, each to its own null.
    In the D phase fakes are made under no_grad: G gets no gradient there. In the G phase D's
    parameters are frozen while the graph is recorded: D gets no gradient there.
    """

    loss: str = "non_saturating"
    z_dim: int = 64
    g_keys: frozenset = field(default_factory=frozenset)
    d_keys: frozenset = field(default_factory=frozenset)
    takes_z: bool = True
    gp_weight: float = 0.0
    r1_gamma: float = 0.0
    diffaugment: tuple = ()
    style_mixing: float = 0.0
    l1_weight: float = 0.0
    cond_dropout: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_loss(self.loss)
        diff_augment(torch.zeros(1, 1, 4, 4), self.diffaugment)  # names are checked now, not mid-run
        if self.diffaugment and not self.takes_z:
            # the pair would need one shared draw; Pix2Pix trains without augmentation
            raise ConfigError("gan.diffaugment is not supported with image conditioning (Pix2Pix); set it to []")
        for name in ("gp_weight", "r1_gamma", "style_mixing", "l1_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"gan.{name} must be >= 0, got {getattr(self, name)}")

    def conditions(self, G, D, batch, generator) -> tuple[dict, dict]:
        """(what G reads of the batch's ``cond``, what D reads), after ``cond_dropout``."""
        cond = as_cond(batch.get("cond"))
        parts = {G: select(cond, self.g_keys), D: select(cond, self.d_keys)}
        for key, rate in self.cond_dropout.items():
            if not rate or key not in cond:
                continue
            value = cond[key]
            first = next(iter(value.values())) if isinstance(value, dict) else value
            keep = torch.rand((len(first),), generator=generator, device=first.device) >= rate
            for net, part in parts.items():
                if key in part:  # DDP wraps the net: the null is the module's
                    null = null_value(getattr(net, "module", net), key, value)
                    part[key] = where(keep, {key: value}, {key: null})[key]
        return parts[G], parts[D]

    def fake(self, G, batch, generator, cond=None):
        """G's images for this batch (``cond``: what G reads, by default the batch's keys it reads)."""
        x = batch["x"]
        cond = select(batch.get("cond"), self.g_keys) if cond is None else cond
        if not self.takes_z:
            return G(cond)
        z = torch.randn(x.shape[0], self.z_dim, generator=generator, device=x.device)
        if self.style_mixing and hasattr(G, "num_ws"):
            if torch.rand((), generator=generator, device=x.device).item() < self.style_mixing:
                z2 = torch.randn(x.shape[0], self.z_dim, generator=generator, device=x.device)
                crossover = int(torch.randint(1, len(G.layers), (), generator=generator, device=x.device))
                return G(z, cond, z2=z2, crossover=crossover)
        return G(z, cond)

    def critic(self, D, batch, generator, cond=None):
        """x -> D's logits for this batch's condition (or ``cond``), with the augmentation in front."""
        cond = select(batch.get("cond"), self.d_keys) if cond is None else cond
        if self.diffaugment:
            return lambda x: D(diff_augment(x, self.diffaugment, generator=generator), cond)
        return lambda x: D(x, cond)

    def d_loss(self, G, D, batch, *, generator):
        real = batch["x"]
        g_cond, d_cond = self.conditions(G, D, batch, generator)
        with torch.no_grad():
            fake = self.fake(G, batch, generator, g_cond)
        critic = self.critic(D, batch, generator, d_cond)
        r, f = critic(real), critic(fake)
        loss = d_loss(self.loss, r, f)
        logs = {"d_loss": loss.detach().mean(), "d_real": _per_sample(r.detach()).mean(),
                "d_fake": _per_sample(f.detach()).mean()}
        if self.gp_weight:
            gp = gradient_penalty(critic, real, fake, generator=generator)
            loss = loss + self.gp_weight * gp
            logs["gp"] = gp.detach().mean()
        if self.r1_gamma:
            r1 = r1_penalty(critic, real)
            loss = loss + 0.5 * self.r1_gamma * r1
            logs["r1"] = r1.detach().mean()
        return loss, logs

    def g_loss(self, G, D, batch, *, generator):
        D.requires_grad_(False)  # autograd records no edge to D's weights: no wasted D gradient
        try:
            g_cond, d_cond = self.conditions(G, D, batch, generator)  # D's null text is D's weight too
            fake = self.fake(G, batch, generator, g_cond)
            f = self.critic(D, batch, generator, d_cond)(fake)
        finally:
            D.requires_grad_(True)
        loss = g_loss(self.loss, f)
        logs = {"g_loss": loss.detach().mean()}
        if self.l1_weight:
            l1 = (fake.float() - batch["x"].float()).abs().flatten(1).mean(1)
            loss = loss + self.l1_weight * l1
            logs["l1"] = l1.detach().mean()
        return loss, logs
