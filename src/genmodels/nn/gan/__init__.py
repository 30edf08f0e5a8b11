"""Generators and discriminators of the GAN family.

Signatures the GAN objective relies on (``cond`` is the conditioning dict, ``genmodels.cond``;
each net reads the keys in its ``cond_keys``):
  generator ``G(z [B, z_dim], cond=None) -> x``; discriminator ``D(x, cond=None) -> logits [B]``
  (class-conditional nets read ``cond["y"]``);
  Pix2Pix: ``UNetGenerator(cond) -> x`` and ``PatchDiscriminator(x, cond) -> logits [B, 1, h, w]``,
  both reading the input image ``cond["image"]``.

- ``mlp``: ``MLPGenerator`` / ``MLPDiscriminator`` for 2-D toys;
- ``dcgan``: ``DCGenerator`` / ``DCDiscriminator`` (DCGAN, with ProGAN's options);
- ``stylegan``: ``StyleGenerator`` (StyleGAN2-style);
- ``pix2pix``: ``UNetGenerator`` and ``PatchDiscriminator``;
- ``common``: the layers they share.

Upsampling is nearest + 3x3 conv everywhere (no checkerboard artefacts of transposed convs).
``GENERATORS`` and ``DISCRIMINATORS`` are the registries (``model.network`` and
``gan.discriminator.network``).
"""

from genmodels.nn.gan.common import (ConditionalBatchNorm2d, EqualConv2d, EqualLinear, MinibatchStd,
                                     PixelNorm)
from genmodels.nn.gan.dcgan import DCDiscriminator, DCGenerator
from genmodels.nn.gan.mlp import MLPDiscriminator, MLPGenerator
from genmodels.nn.gan.pix2pix import PatchDiscriminator, UNetGenerator
from genmodels.nn.gan.stylegan import ModulatedConv2d, StyleGenerator, StyleLayer

GENERATORS = {"mlp": MLPGenerator, "dcgan": DCGenerator, "stylegan": StyleGenerator, "unet": UNetGenerator}
DISCRIMINATORS = {"mlp": MLPDiscriminator, "dcgan": DCDiscriminator, "patch": PatchDiscriminator}

__all__ = [
    "EqualLinear", "EqualConv2d", "MinibatchStd", "PixelNorm", "ConditionalBatchNorm2d", "ModulatedConv2d",
    "StyleLayer", "MLPGenerator", "MLPDiscriminator", "DCGenerator", "DCDiscriminator", "StyleGenerator",
    "UNetGenerator", "PatchDiscriminator", "GENERATORS", "DISCRIMINATORS",
]
