"""Families: what each kind of model brings to the one trainer, run directory, CLI and pipeline.

The seam (``base``: the ``Family`` contract, ``SampleOption``, ``TrainContext``, ``LoadedRun``,
the ``FAMILIES`` registry), the one load seam (``loading``: ``load_run``, ``load``), and the
built-in families, each in its own file: ``diffusion`` (and ``classifier``), ``vae``, ``gan``,
``pix2pix``, ``autoencoder``, ``controlnet`` (a control image steering another run), ``lora``
(adapters on another run), ``distill`` (a faster student of another run), ``consistency``
(consistency training and distillation). Importing this package registers them.

    >>> pipe = genmodels.families.load("runs/demo")
    >>> x = pipe.sample(16, seed=0)
"""

from .base import (FAMILIES, RUN_REFERENCES, Family, LoadedRun, SampleOption, TrainContext, TrainParts,
                   check_labels, register)
from .loading import WEIGHT_FILES, base_record, get_family, load, load_run, read_run_config, run_references
from . import latent  # noqa: E402,F401  (the latent section: latent diffusion's seam)
from ..data import text  # noqa: E402,F401  (the text section: captions and their encoder)
from ..data import masking  # noqa: E402,F401  (the inpaint section: an inpainting model's training masks)
from ..data import control  # noqa: E402,F401  (the control section: a ControlNet's control images)
from . import diffusion, gan, pix2pix, vae, autoencoder, controlnet, lora, distill, consistency  # noqa: E402,F401  (each registers its family)
from .diffusion import Pipeline, load_classifier  # noqa: E402
from .. import interop  # noqa: E402,F401  (registers the diffusers: source of load; diffusers itself is imported lazily)

__all__ = ["FAMILIES", "Family", "LoadedRun", "Pipeline", "RUN_REFERENCES", "SampleOption", "TrainContext",
           "TrainParts", "WEIGHT_FILES", "base_record", "check_labels", "get_family", "load", "load_classifier",
           "load_run", "read_run_config", "register", "run_references"]
