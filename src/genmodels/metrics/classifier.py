"""A small MNIST classifier that judges whether generated digits are recognisable.

A plain digit classifier is confidently wrong on things that are not digits (it calls uniform
noise an '8' with p = 1), so this one has an eleventh class, "not a digit", trained on noise,
pixel-shuffled digits and blends of two different digits (what an undertrained diffusion model
draws). A sample counts as recognisable when a digit class gets p >= 0.9. Trained
deterministically on the MNIST training split in seconds and cached as safetensors under
$GENMODELS_CACHE (default ~/.cache/genmodels). The demo reports the fraction next to the same
fraction on real test digits, its ceiling. (The full evaluation protocol, FD in CNN features,
is a separate module.)
"""

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..data import load_dataset
from ..paths import cache_dir


NOT_A_DIGIT = 10


class SmallCNN(nn.Module):
    def __init__(self, num_classes=11):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def not_digits(digits, labels, *, generator):
    """As many non-digits as ``digits``: uniform noise, Gaussian noise, pixel-shuffled digits,
    and 50/50 blends of two digits of different classes, in equal parts."""
    n = len(digits)
    parts = torch.randint(0, 4, (n,), generator=generator)
    noise_u = torch.rand(digits.shape, generator=generator) * 2 - 1
    noise_g = (torch.randn(digits.shape, generator=generator) * 0.5).clamp(-1, 1)
    flat = digits.flatten(1)
    shuffled = flat[:, torch.randperm(flat.shape[1], generator=generator)].view_as(digits)
    other = torch.randperm(n, generator=generator)
    blend = 0.5 * (digits + digits[other])
    same_class = labels == labels[other]
    parts[(parts == 3) & same_class] = 0  # a blend of two 7s is still a 7
    choices = torch.stack([noise_u, noise_g, shuffled, blend])
    return choices[parts, torch.arange(n)]


def train_classifier(*, epochs=4, seed=0, batch_size=64) -> SmallCNN:
    """Adam on the 4,500 training digits (small random shifts, so off-centre strokes do not fool
    it) plus as many generated non-digits; deterministic for a given seed on the CPU."""
    torch.manual_seed(seed)
    data = load_dataset("mnist", split="train")
    net = SmallCNN()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(data.x), generator=g)
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            x = data.x[idx]
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
            x = torch.cat([x, not_digits(x, data.y[idx], generator=g)])
            y = torch.cat([data.y[idx], torch.full((len(idx),), NOT_A_DIGIT)])
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def mnist_classifier() -> SmallCNN:
    """The cached classifier, trained on first use."""
    path = cache_dir() / "mnist-smallcnn-v2.safetensors"
    net = SmallCNN()
    if path.is_file():
        net.load_state_dict(load_file(str(path)))
        return net.eval()
    net = train_classifier()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs retraining next time
    return net


@torch.inference_mode()
def predict(net, x, *, batch_size=500):
    probs = torch.cat([F.softmax(net(x[i:i + batch_size].float().cpu()), dim=1)
                       for i in range(0, len(x), batch_size)])
    return probs.max(dim=1)


@dataclass(frozen=True)
class Recognisability:
    confident_fraction: float  # samples given a digit class with probability >= threshold
    classes_covered: int  # distinct predicted classes among the confident samples
    class_counts: tuple
    real_confident_fraction: float  # the same on the real MNIST test split: the ceiling
    classifier_test_accuracy: float
    threshold: float

    def as_facts(self) -> dict:
        return {
            "recognisable samples (MNIST CNN, p >= %.1f)" % self.threshold:
                f"{100 * self.confident_fraction:.0f} % (real test digits: "
                f"{100 * self.real_confident_fraction:.0f} %)",
            "digit classes among them": f"{self.classes_covered} of 10, counts {list(self.class_counts)}",
            "classifier test accuracy": f"{100 * self.classifier_test_accuracy:.1f} %",
        }


def recognisability(x, *, device=None, threshold=0.9) -> Recognisability:
    """Score samples ``x`` [N, 1, 28, 28] in [-1, 1] with the MNIST classifier."""
    if x.shape[1:] != (1, 28, 28):
        raise ValueError(f"recognisability needs MNIST-shaped samples [N, 1, 28, 28], got {tuple(x.shape)}")
    net = mnist_classifier()
    conf, label = predict(net, x)
    test = load_dataset("mnist", split="test")
    test_conf, test_pred = predict(net, test.x)
    confident = (conf >= threshold) & (label != NOT_A_DIGIT)
    counts = torch.bincount(label[confident], minlength=11)[:10]
    return Recognisability(
        confident_fraction=confident.float().mean().item(),
        classes_covered=int((counts > 0).sum()),
        class_counts=tuple(counts.tolist()),
        real_confident_fraction=((test_conf >= threshold) & (test_pred != NOT_A_DIGIT)).float().mean().item(),
        classifier_test_accuracy=(test_pred == test.y).float().mean().item(),
        threshold=threshold)
