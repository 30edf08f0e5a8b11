"""genmodels: train, sample and evaluate generative image models from scratch."""

from ._version import __version__


def load(run_dir, **kwargs):
    """Rebuild a trained run of any family: ``genmodels.load("runs/demo").sample(64, seed=0)``."""
    from .families import load as _load

    return _load(run_dir, **kwargs)


def load_classifier(run_dir, **kwargs):
    """A noise-aware classifier run for classifier guidance: ``pipe.sample(..., classifier=c)``."""
    from .families import load_classifier as _load_classifier

    return _load_classifier(run_dir, **kwargs)


def from_diffusers(model, scheduler=None, **kwargs):
    """A diffusers UNet2DModel (or its save_pretrained folder) and its scheduler as a diffusion
    pipeline: ``genmodels.from_diffusers("ddpm-folder").sample(16, sampler="dpmpp_2m", steps=20)``."""
    from .interop import from_diffusers as _from_diffusers

    return _from_diffusers(model, scheduler, **kwargs)


def distill(teacher, out, **kwargs):
    """Distil a diffusion run into a faster one (``genmodels.families.distill.distill_run``):
    ``genmodels.distill("runs/mnist-ddpm", "runs/pd4", method="progressive", steps=4, teacher_steps=64)``."""
    from .families.distill import distill_run

    return distill_run(teacher, out, **kwargs)


def evaluate(run_dir, **kwargs):
    """Score a run by the evaluation protocol (docs/EVALUATION.md):
    ``genmodels.evaluate("runs/mnist", metrics=["fd_cnn", "kid"], n=1000, seeds=[0, 1]).mean``."""
    from .evaluation import evaluate_run

    return evaluate_run(run_dir, **kwargs)


__all__ = ["__version__", "distill", "load", "load_classifier", "from_diffusers", "evaluate"]
