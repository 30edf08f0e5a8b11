"""Scores from a dataset classifier's logits on generated samples.

- classifier score: the Inception Score (Salimans et al. 2016) with the dataset CNN in place of
  Inception, exp(E_x KL(p(y|x) || p(y))), mean and sample std over ``splits`` equal parts; it
  ranges from 1 (every sample gets the same class distribution) to the number of classes;
- conditional accuracy: for class-conditional models, the fraction of samples that the CNN
  assigns to the class they were asked for.
"""

from dataclasses import dataclass

import torch

from ..errors import DataError

__all__ = ["ClassifierScore", "classifier_score", "conditional_accuracy"]


@dataclass(frozen=True)
class ClassifierScore:
    mean: float
    std: float
    splits: int


def classifier_score(logits, *, splits=10) -> ClassifierScore:
    logits = torch.as_tensor(logits).to(torch.float64)
    if logits.ndim != 2 or len(logits) < splits:
        raise DataError(f"classifier score needs logits [N, K] with N >= splits = {splits}, "
                        f"got shape {tuple(logits.shape)}")
    scores = []
    for part in logits.chunk(splits):
        log_p = part.log_softmax(1)
        log_marginal = log_p.exp().mean(0).log()
        scores.append((log_p.exp() * (log_p - log_marginal)).sum(1).mean().exp())
    scores = torch.stack(scores)
    std = scores.std().item() if splits > 1 else 0.0
    return ClassifierScore(scores.mean().item(), std, splits)


def conditional_accuracy(logits, labels) -> float:
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if len(logits) != len(labels):
        raise DataError(f"{len(logits)} samples but {len(labels)} requested labels")
    return (logits.argmax(1) == labels.to(logits.device)).double().mean().item()
