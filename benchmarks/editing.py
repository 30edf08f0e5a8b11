"""Editing experiments: RePaint settings vs a trained inpainting model per mask, SDEdit's
realism-faithfulness trade-off, inversion edits with and without null optimisation.

    # completions of the test images per mask: class accuracy (MNIST), fd_cnn, seam, diversity, s/image
    python benchmarks/editing.py inpaint runs/demo --model-run runs/mnist-inpaint --masks top,center,strokes \\
        --settings ddim:50:0:1,ddpm:50:0:1,ddpm:50:5:3 --n 500
    # SDEdit on blocky 7x7 "paintings" of test digits: fd_cnn against the distance to the painting
    python benchmarks/editing.py sdedit runs/demo --strengths 0.2,0.4,0.6,0.8,1.0 --n 500 --out docs/edit/sdedit.png
    # inversion: reconstruction PSNR at w = 1 and w = 3, with and without null optimisation; 3 -> 8 edits
    python benchmarks/editing.py inversion runs/mnist-cfg --n 32 --w 1,3
    # the picture: per mask, the input and each setting's completions of 8 test images
    python benchmarks/editing.py grid runs/demo --model-run runs/mnist-inpaint --masks top,center,strokes:0 \
        --settings ddim:50:0:1,ddpm:50:5:3,model --out docs/edit/inpaint_mnist.png

A setting is SAMPLER:STEPS:JUMP_LENGTH:JUMP_N_SAMPLE (RePaint) or "model" (the --model-run's own
sampler). Completion i of test image i mod N uses seed i. fd_cnn compares the completions with
the training set in the dataset's feature CNN (n stated per row). The seam score is the mean
gradient magnitude on the mask's one-pixel border band divided by the same on the real test
images (1 = as smooth across the border as real images; > 1 = a visible seam). Diversity is the
mean pairwise L2 distance inside the mask between 8 completions of each of the first 16 images.
Prints markdown tables; --json keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import genmodels
from genmodels.data import load_dataset
from genmodels.edit.inpaint import evaluations, inpaint
from genmodels.edit.masks import make_mask
from genmodels.metrics.features import feature_net
from genmodels.metrics.frechet import fd


def test_and_train(pipe):
    data = pipe.config.data
    kw = dict(image_size=data.image_size, channels=data.channels)
    return load_dataset(data.name, split="test", **kw), load_dataset(data.name, split="train", **kw)


def border_band(mask):
    """Pixels within one pixel of the mask's edge (dilation minus erosion)."""
    dilated = F.max_pool2d(mask, 3, 1, 1)
    eroded = -F.max_pool2d(-mask, 3, 1, 1)
    return (dilated - eroded).bool()


def gradient_magnitude(x):
    gx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    gy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return (gx.square() + gy.square()).sqrt().mean(1, keepdim=True)


def seam_score(done, real, mask):
    band = border_band(mask).expand_as(gradient_magnitude(done))
    return (gradient_magnitude(done)[band].mean() / gradient_magnitude(real)[band].mean().clamp_min(1e-8)).item()


def diversity(pipe, images, mask, **kw):
    """Mean pairwise L2 distance inside the mask over 8 completions of each image."""
    copies = 8
    done = inpaint(pipe, images.repeat(copies, 1, 1, 1), mask.repeat(copies, 1, 1, 1), seed=10**6, **kw)
    done = (done * mask.repeat(copies, 1, 1, 1)).reshape(copies, len(images), -1)
    dists = [torch.cdist(done[:, i], done[:, i]) for i in range(len(images))]
    return torch.stack([d.sum() / (copies * (copies - 1)) for d in dists]).mean().item()


def parse_setting(text):
    if text == "model":
        return {"method": "model"}
    sampler, steps, jump_length, jump_n = text.split(":")
    return {"method": "repaint", "sampler": sampler, "steps": int(steps), "jump_length": int(jump_length),
            "jump_n_sample": int(jump_n)}


def inpaint_table(args):
    base = genmodels.load(args.run, device=args.device)
    model = genmodels.load(args.model_run, device=args.device) if args.model_run else None
    test, train = test_and_train(base)
    feats = feature_net(base.config.data.name, progress=False)
    train_features = feats.features(train.x[: args.reference])
    classify = base.config.data.name == "mnist"
    rows = []
    for mask_name in args.masks.split(","):
        for setting_text in args.settings.split(","):
            setting = parse_setting(setting_text)
            pipe = model if setting["method"] == "model" else base
            if pipe is None:
                continue
            index = torch.arange(args.n) % len(test)
            x = test.x[index]
            mask = make_mask(mask_name, tuple(x.shape[2:])).expand(len(x), 1, *x.shape[2:])
            kw = {**setting, "progress": False}
            t0 = time.perf_counter()
            done = inpaint(pipe, x, mask, seed=0, batch_size=args.batch_size, **kw)
            seconds = (time.perf_counter() - t0) / len(x)
            features, logits = feats.features_and_logits(done)
            row = {"mask": mask_name, "setting": setting_text, "n": len(x),
                   "nfe": (pipe.sample_settings()["steps"] if setting["method"] == "model"
                           else evaluations(setting["steps"], setting["jump_length"], setting["jump_n_sample"])),
                   "fd_cnn": fd(train_features, features), "seam": seam_score(done, x, mask),
                   "s_per_image": seconds}
            if classify and logits is not None:
                row["class_acc"] = (logits[:, :10].argmax(1) == test.y[index]).float().mean().item()
            row["diversity"] = diversity(pipe, x[:16], mask[:16], batch_size=args.batch_size, **kw)
            print(json.dumps(row), flush=True)
            rows.append(row)
    real_features, real_logits = feats.features_and_logits(test.x)
    print(f"\nreference: real test images fd_cnn {fd(train_features, real_features):.2f} (n={len(test)})"
          + (f", class_acc {(real_logits[:, :10].argmax(1) == test.y).float().mean():.3f}" if classify else ""))
    cols = ["mask", "setting", "nfe", "n"] + (["class_acc"] if classify else []) + ["fd_cnn", "seam", "diversity",
                                                                                    "s_per_image"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
    return rows


def sdedit_table(args):
    pipe = genmodels.load(args.run, device=args.device)
    test, train = test_and_train(pipe)
    feats = feature_net(pipe.config.data.name, progress=False)
    train_features = feats.features(train.x[: args.reference])
    index = torch.arange(args.n) % len(test)
    x = test.x[index]
    factor = args.block
    painting = F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="nearest")
    rows = []
    for strength in [float(s) for s in args.strengths.split(",")]:
        t0 = time.perf_counter()
        out = pipe.sample(len(x), seed=0, init_images=painting, strength=strength, progress=False,
                          batch_size=args.batch_size)
        row = {"strength": strength, "n": len(x), "fd_cnn": fd(train_features, feats.features(out)),
               # faithfulness: the result's own blocky version against the painting (SDEdit's L2)
               "l2_to_painting": (F.avg_pool2d(out, factor) - F.avg_pool2d(painting, factor)).flatten(1).norm(dim=1)
               .mean().item(), "s_per_image": (time.perf_counter() - t0) / len(x)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        if strength in (0.4, 0.6, 1.0) or strength == rows[0]["strength"]:
            row["grid"] = out[:8]
    row_paint = {"fd_cnn": fd(train_features, feats.features(painting))}
    print(f"\nthe paintings themselves: fd_cnn {row_paint['fd_cnn']:.2f}")
    print("| strength | n | fd_cnn | L2 to painting | s/image |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strength']} | {r['n']} | {r['fd_cnn']:.2f} | {r['l2_to_painting']:.3f} | {r['s_per_image']:.3f} |")
    if args.out:
        plot_sdedit(rows, painting[:8], x[:8], args.out)
    return [{k: v for k, v in r.items() if k != "grid"} for r in rows]


def plot_sdedit(rows, painting, real, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genmodels.images import make_grid

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 1.4]})
    ax.plot([r["l2_to_painting"] for r in rows], [r["fd_cnn"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"{r['strength']:.1f}", (r["l2_to_painting"], r["fd_cnn"]), textcoords="offset points",
                    xytext=(4, 4))
    ax.set_xlabel("L2 to the painting (lower = more faithful)")
    ax.set_ylabel("fd_cnn (lower = more realistic)")
    ax.set_title("SDEdit: strength trades faithfulness for realism")
    shown = [real, painting] + [r["grid"] for r in rows if "grid" in r]
    labels = ["real", "painting"] + [f"s={r['strength']}" for r in rows if "grid" in r]
    grid = make_grid(torch.cat(shown).clamp(-1, 1), nrow=8)
    ax2.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray")
    ax2.set_yticks([2 + 30 * i + 14 for i in range(len(labels))], labels)
    ax2.set_xticks([])
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def inversion_table(args):
    from genmodels.edit.inversion import inversion_edit

    pipe = genmodels.load(args.run, device=args.device)
    test, _ = test_and_train(pipe)
    feats = feature_net(pipe.config.data.name, progress=False)
    source_class, target_class = args.source, args.target
    x = test.x[test.y == source_class][: args.n]
    rows = []
    for w in [float(v) for v in args.w.split(",")]:
        for null in (False, True):
            if null and w == 1.0:
                continue
            t0 = time.perf_counter()
            result = inversion_edit(pipe, x, source={"labels": source_class}, target={"labels": target_class},
                                    guidance=w, steps=args.steps, null_optimisation=null,
                                    inner_steps=args.inner_steps, lr=args.lr)
            logits = feats.logits(result.edited)
            row = {"w": w, "null_optimisation": null, "n": len(x), "psnr": result.psnr.mean().item(),
                   "psnr_se": (result.psnr.std() / len(x) ** 0.5).item(),
                   "edit_to_target": (logits[:, :10].argmax(1) == target_class).float().mean().item(),
                   "s_per_image": (time.perf_counter() - t0) / len(x)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            if args.out:
                from genmodels.images import save_grid

                save_grid(torch.cat([x[:8], result.reconstruction[:8], result.edited[:8]]),
                          Path(args.out).with_name(f"{Path(args.out).stem}_w{w:g}{'_null' if null else ''}.png"),
                          nrow=8, scale=2)
    print("| w | null optimisation | n | reconstruction PSNR (dB) | edit classified as target | s/image |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['w']:g} | {'yes' if r['null_optimisation'] else 'no'} | {r['n']} | {r['psnr']:.2f} +- "
              f"{r['psnr_se']:.2f} | {r['edit_to_target']:.3f} | {r['s_per_image']:.2f} |")
    return rows


def grid_figure(args):
    """Rows per mask: the input with the hole in gray, then each setting's completions of the
    first 8 test images (seed 0)."""
    from genmodels.images import save_captioned_grid

    base = genmodels.load(args.run, device=args.device)
    model = genmodels.load(args.model_run, device=args.device) if args.model_run else None
    test, _ = test_and_train(base)
    x = test.x[:8]
    rows, names = [], []
    for mask_name in args.masks.split(","):
        mask = make_mask(mask_name, tuple(x.shape[2:])).expand(len(x), 1, *x.shape[2:])
        rows.append(torch.where(mask.bool().expand_as(x), torch.zeros_like(x), x))
        names += [f"{mask_name}: input"] + [""] * 7
        for setting_text in args.settings.split(","):
            setting = parse_setting(setting_text)
            pipe = model if setting["method"] == "model" else base
            if pipe is None:
                continue
            rows.append(inpaint(pipe, x, mask, seed=0, progress=False, **setting))
            names += [setting_text] + [""] * 7
    save_captioned_grid(torch.cat(rows), names, args.out, nrow=8, scale=3, lines=1)
    print(f"{len(rows)} rows -> {args.out}")
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("inpaint", "sdedit", "inversion", "grid"):
        p = sub.add_parser(name)
        p.add_argument("run")
        p.add_argument("--n", type=int, default=500)
        p.add_argument("--device", default="cpu")
        p.add_argument("--batch-size", type=int, default=100)
        p.add_argument("--reference", type=int, default=4500, help="training images in the fd_cnn reference")
        p.add_argument("--json", default=None)
        p.add_argument("--out", default=None)
        if name in ("inpaint", "grid"):
            p.add_argument("--model-run", default=None)
            p.add_argument("--masks", default="top,bottom,center,strokes:0")
            p.add_argument("--settings", default="ddim:50:0:1,ddpm:50:0:1,ddpm:50:5:3,model")
        if name == "sdedit":
            p.add_argument("--strengths", default="0.2,0.4,0.6,0.8,1.0")
            p.add_argument("--block", type=int, default=4)
        if name == "inversion":
            p.add_argument("--w", default="1,3")
            p.add_argument("--steps", type=int, default=50)
            p.add_argument("--inner-steps", type=int, default=10)
            p.add_argument("--lr", type=float, default=0.1)
            p.add_argument("--source", type=int, default=3)
            p.add_argument("--target", type=int, default=8)
    args = parser.parse_args()
    rows = {"inpaint": inpaint_table, "sdedit": sdedit_table, "inversion": inversion_table,
            "grid": grid_figure}[args.what](args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
