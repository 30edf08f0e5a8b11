"""Metrics over samples and features, and the evaluation protocol every family uses.

Pure functions over features: ``fd`` (Frechet distance), ``kid``, ``prdc``, ``classifier_score``,
``conditional_accuracy``; over 2-D points: ``wasserstein``, ``mmd_rbf``, ``mode_coverage``,
``log_density``; likelihoods: ``ddpm_vlb``, ``ode_log_likelihood``, ``bits_per_dim``. Feature
networks: ``feature_net("mnist" | "fashion" | "digits" | FILE)``. The registry ``METRICS`` (name
-> function, kinds, needs, defaults, help). The protocol: ``evaluate(pipeline, ...)`` (a loaded run
of any family; ``genmodels.evaluate(run_dir)`` loads and evaluates) and ``compare_images(real,
fake, features=...)``. See docs/EVALUATION.md. Nothing here imports the families.
"""

from .classify import ClassifierScore, classifier_score, conditional_accuracy
from .features import FeatureCNN, FeatureNet, build_feature_cnn, feature_net
from .frechet import GaussianStats, fd, frechet_distance, gaussian_stats
from .kid import KID, kid
from .likelihood import bits_per_dim, ddpm_vlb, dequantize, ode_log_likelihood
from .prdc import PRDC, knn_radii, prdc
from .protocol import REFERENCE_SPLITS, EvalResult, compare_images, evaluate, format_table, reference_features
from .registry import METRICS, EvalInputs, Metric
from .toy import log_density, mmd_rbf, mode_coverage, wasserstein

__all__ = [
    "ClassifierScore", "classifier_score", "conditional_accuracy", "FeatureCNN", "FeatureNet",
    "build_feature_cnn", "feature_net", "GaussianStats", "fd", "frechet_distance", "gaussian_stats",
    "KID", "kid", "bits_per_dim", "ddpm_vlb", "dequantize", "ode_log_likelihood", "PRDC", "knn_radii",
    "prdc", "REFERENCE_SPLITS", "EvalResult", "EvalInputs", "METRICS", "Metric", "compare_images", "evaluate",
    "format_table",
    "reference_features", "log_density", "mmd_rbf", "mode_coverage", "wasserstein",
]
