"""Completions of a trained inpainting model (configs mnist-inpaint, emoji-inpaint) on test images.

Saves a grid with, per mask (top, center, strokes), three rows: the input, the mask over it (red),
the completion; prints the mean squared error inside the mask against the true image, next to
plain sampling's in the same region (a full mask: the same model drawing without the context).

    python benchmarks/inpaint_model.py /work/runs/edit/mnist-inpaint docs/edit/inpaint_model.png
"""

import argparse

import torch

import genmodels
from genmodels.data import load_dataset
from genmodels.edit.inpaint_model import inpaint_with_model
from genmodels.edit.masks import resolve_mask
from genmodels.images import save_grid

MASKS = ("top", "center", "strokes:7")


def rgb(x):
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def overlay(images, mask):
    red = torch.tensor([1.0, -1.0, -1.0]).reshape(1, 3, 1, 1)
    return rgb(images) * (1 - mask) + (0.5 * rgb(images) + 0.5 * red) * mask


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("out")
    parser.add_argument("--n", type=int, default=8, help="images per row of the grid")
    parser.add_argument("--n-error", type=int, default=64, help="test images the errors average over")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    pipe = genmodels.load(args.run, device="cpu")
    cfg = pipe.config.data
    test = load_dataset(cfg.name, split="test", image_size=cfg.image_size, channels=cfg.channels)
    images = test.x[: max(args.n, args.n_error)]
    rows = []
    plain = pipe.sample(len(images), seed=0, steps=args.steps, progress=False)  # a full mask: no context
    for spec in MASKS:
        mask = resolve_mask(spec, len(images), tuple(images.shape[2:]))
        out = inpaint_with_model(pipe, images, spec, seed=0, steps=args.steps)
        region = mask.expand_as(out).bool()
        error, baseline = ((y - images).square()[region].mean().item() for y in (out, plain))
        print(f"{spec:10s} mse in the mask: completion {error:.4f}, plain sampling {baseline:.4f}")
        rows += [rgb(images[: args.n]), overlay(images[: args.n], mask[: args.n]), rgb(out[: args.n])]
    save_grid(torch.cat(rows).clamp(-1, 1), args.out, nrow=args.n, scale=2 if images.shape[-1] < 48 else 1)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
