"""Metrics over samples and features, and the evaluation protocol every family uses.

Pure functions over features: ``fd`` (Frechet distance), ``kid``, ``prdc``, ``classifier_score``,
``conditional_accuracy``; over 2-D points: ``wasserstein``, ``mmd_rbf``, ``mode_coverage``,
``log_density``; likelihoods: ``ddpm_vlb``, ``ode_log_likelihood``, ``bits_per_dim``. Feature
networks: ``feature_net("mnist" | "fashion" | "digits" | FILE)``. The protocol:
``evaluate_run(run_dir, ...)`` and ``compare_images(real, fake, features=...)``. See
docs/EVALUATION.md.
"""

from .classify import ClassifierScore, classifier_score, conditional_accuracy
from .features import FeatureCNN, FeatureNet, build_feature_cnn, feature_net
from .frechet import GaussianStats, fd, frechet_distance, gaussian_stats
from .kid import KID, kid
from .likelihood import bits_per_dim, ddpm_vlb, dequantize, ode_log_likelihood
from .prdc import PRDC, knn_radii, prdc
from .protocol import (REFERENCE_SPLITS, EvalResult, compare_images, evaluate_run, format_table,
                       reference_features)
from .toy import log_density, mmd_rbf, mode_coverage, wasserstein

__all__ = [
    "ClassifierScore", "classifier_score", "conditional_accuracy", "FeatureCNN", "FeatureNet",
    "build_feature_cnn", "feature_net", "GaussianStats", "fd", "frechet_distance", "gaussian_stats",
    "KID", "kid", "bits_per_dim", "ddpm_vlb", "dequantize", "ode_log_likelihood", "PRDC", "knn_radii",
    "prdc", "REFERENCE_SPLITS", "EvalResult", "compare_images", "evaluate_run", "format_table",
    "reference_features", "log_density", "mmd_rbf", "mode_coverage", "wasserstein",
]
