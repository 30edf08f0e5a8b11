"""Training a noise-aware classifier (Dhariwal & Nichol 2021, Sec. 4.1): cross-entropy of the
label given x_t, with t drawn as the diffusion objective draws it, so the classifier knows every
noise level the sampler visits."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class NoisyClassifierObjective:
    path: object

    def __call__(self, net, batch, *, generator):
        x0, y = batch["x"], batch["cond"]["y"]  # the labels ride in the batch's conditioning
        t = self.path.sample_t(x0.shape[0], generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t, _, _ = self.path.add_noise(x0, noise, t)
        logits = net(x_t, self.path.c_noise(t).to(x0.dtype)).float()
        loss = F.cross_entropy(logits, y, reduction="none")
        return loss, {"accuracy": (logits.argmax(1) == y).float().mean().detach()}
