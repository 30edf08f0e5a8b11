"""genmodels' samplers on a diffusers UNet2DModel (genmodels.interop) against diffusers' own
DDIMPipeline and DDPMPipeline: agreement on the same noise and wall time, at the size of
google/ddpm-cifar10-32 (35.7M parameters, 32x32x3, attention at 16x16; random init, as no
weights are available offline).

    python benchmarks/interop_diffusers.py                   # batch 2, 50 steps, best of 2 alternated runs
    python benchmarks/interop_diffusers.py --batch 4 --steps 10 --threads 1 --repeats 3
"""

import argparse
import time

import torch

import diffusers
import diffusers.pipelines.ddim.pipeline_ddim as ddim_module
import diffusers.pipelines.ddpm.pipeline_ddpm as ddpm_module
import diffusers.schedulers.scheduling_ddpm as ddpm_scheduler_module
from genmodels.interop import from_diffusers
from genmodels.samplers import SeededNoise

CIFAR10_UNET = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                    block_out_channels=(128, 256, 256, 256),
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def feed(draws, *modules):
    """diffusers' randn_tensor in ``modules`` returns ``draws`` in order (genmodels' seeded stream)."""
    it = iter(draws)
    for module in modules:
        module.randn_tensor = lambda *a, **k: next(it).clone()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**CIFAR10_UNET).eval()
    print(f"UNet2DModel {sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M parameters, "
          f"batch {args.batch}, {args.steps} steps, {torch.get_num_threads()} threads")
    n, shape = args.batch, (3, 32, 32)
    cases = {"ddim": (diffusers.DDIMPipeline, diffusers.DDIMScheduler(clip_sample=False), dict(eta=0.0),
                      (ddim_module,)),
             "ddpm": (diffusers.DDPMPipeline, diffusers.DDPMScheduler(clip_sample=True), {},
                      (ddpm_module, ddpm_scheduler_module))}
    for sampler, (pipeline_cls, sched, kwargs, modules) in cases.items():
        t_theirs = t_ours = float("inf")
        pipe = from_diffusers(unet, sched, device="cpu")
        for _ in range(args.repeats):  # alternated, best of each: the machine is shared
            noise = SeededNoise(range(n), shape)
            feed([noise() for _ in range(args.steps + 1)], *modules)
            start = time.perf_counter()
            with torch.inference_mode():
                theirs = pipeline_cls(unet, sched)(batch_size=n, num_inference_steps=args.steps, output_type="pt",
                                                   **kwargs).images * 2 - 1
            t_theirs = min(t_theirs, time.perf_counter() - start)
            start = time.perf_counter()
            ours = pipe.sample(n, seed=0, sampler=sampler, steps=args.steps)
            t_ours = min(t_ours, time.perf_counter() - start)
        print(f"{sampler:5s} clip_sample={sched.config.clip_sample!s:5s} max |ours - diffusers| "
              f"{(ours - theirs).abs().max().item():.2e} (images in [-1, 1]); "
              f"diffusers {t_theirs:.1f} s, genmodels {t_ours:.1f} s")


if __name__ == "__main__":
    main()
