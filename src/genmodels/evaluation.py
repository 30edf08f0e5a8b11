"""Evaluate a run directory by the protocol: load it (any family) and score it
(``genmodels.metrics.protocol.evaluate``; docs/EVALUATION.md).

    result = evaluate_run("runs/mnist", metrics=["fd_cnn", "kid"], n=1000, seeds=[0, 1])
    result.mean["fd_cnn"], result.std["fd_cnn"]
"""

from .families import load
from .metrics.protocol import EvalResult, evaluate


def evaluate_run(run_dir, *, device="auto", weights="ema", **options) -> EvalResult:
    """Load ``run_dir`` with ``weights`` on ``device`` and evaluate it; ``options`` are those of
    ``protocol.evaluate`` (metrics, n, seeds, sampler, steps, eta, features, nll_*, batch_size,
    progress, log, proxy)."""
    pipe = load(run_dir, device=device, weights=weights)
    # the pipeline's own directory: a "diffusers:FOLDER" source logs into FOLDER
    return evaluate(pipe, run_dir=getattr(pipe, "run_dir", None) or run_dir, weights=weights, **options)


__all__ = ["EvalResult", "evaluate_run"]
