"""Training throughput on MNIST: genmodels' trainer against diffusers at equal parameters and FLOPs.

One training step: a batch of 64 MNIST digits (28x28) gathered from the in-memory dataset,
noise and timesteps drawn, forward, MSE backward, gradient clipping, AdamW, EMA update.

- ours: the ``mnist-ddpm`` config built and stepped by genmodels' own trainer
  (``prepare(...).step()``: lean UNet, cosine DDPM, v-prediction, Min-SNR-5, channels_last).
- peer: diffusers' ``UNet2DModel`` with block widths (16, 56, 64) and a 240-wide time
  embedding, chosen so that its parameter count and training FLOPs per image are both within
  1 % of ours (both counted here with ``torch.utils.flop_counter``), trained as diffusers'
  ``train_unconditional.py`` example does: ``DDPMScheduler.add_noise``, v-prediction target,
  ``EMAModel``; it gets the same AdamW (fused where torch has it) and the same data tensor.

The two are timed in the same process, interleaved A B B A per round because the machine's
speed drifts, and the ratio is the median over rounds. GFLOP/s are training FLOPs per image
times img/s, compared with the fp32 matrix-multiply peak measured in the same run (the better of BLAS and a
oneDNN 1x1 convolution). FLOPs are the network's nominal ones: our upsampling layers compute
"nearest x2, then 3x3 conv" as 2x2 convs at the coarse resolution (genmodels.nn.upsample_conv, the
same function with about half the FLOPs), so they are counted in the textbook form the peer runs,
which keeps "equal FLOPs" meaning the same network; the FLOPs we execute are reported too. Peak memory
is the peak resident set (CPU) or peak allocated memory (CUDA) of a fresh process that builds
the model and takes a few steps.

    python benchmarks/train_throughput.py                 # markdown table
    python benchmarks/train_throughput.py --json          # one JSON line
    python benchmarks/train_throughput.py --unfused       # + our trainer without its C++ kernels
    python benchmarks/train_throughput.py --textbook-upsample  # + ours upsampling then convolving at 2x
    python benchmarks/train_throughput.py --device cuda --rounds 5 --steps 20
"""

import argparse
import contextlib
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from genmodels.config import load_config
from genmodels.data import load_dataset
from genmodels.errors import KernelBuildError
from genmodels.nn import fused, layers, upsample_conv
from genmodels.train.run import make_adamw, prepare

BATCH = 64
PEER_UNET = dict(block_out_channels=(16, 56, 64), time_embedding_dim=240, layers_per_block=1, norm_num_groups=8,
                 down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def ours(device: str):
    """(step, model) of genmodels' trainer on the mnist-ddpm config (no logs, previews, saves)."""
    never = 10**12
    cfg = load_config("mnist-ddpm", [f"train.device={device}", f"train.batch_size={BATCH}",
                                     f"train.log_every_images={never}", f"train.sample_every_images={never}",
                                     f"train.checkpoint_every_images={never}"])
    trainer = prepare(cfg, tempfile.mkdtemp(prefix="train_throughput_") + "/run")
    trainer.modules["net"].train()
    return trainer.step, trainer.modules["net"]


def peer(device: str):
    """(step, model) of diffusers' UNet2DModel in the loop of their train_unconditional example."""
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    device = torch.device(device)
    x = load_dataset("mnist", split="train").x.to(device)
    model = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, **PEER_UNET).to(device).train()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type="v_prediction")
    optimizer = make_adamw(model.parameters(), lr=2e-3)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    generator = torch.Generator(device).manual_seed(0)
    bf16 = device.type == "cuda"  # what our trainer does on CUDA (train.precision=auto)

    def step():
        clean = x[torch.randint(0, len(x), (BATCH,), device=device, generator=generator)]
        noise = torch.randn(clean.shape, device=device, generator=generator)
        t = torch.randint(0, 1000, (BATCH,), device=device, generator=generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(scheduler.add_noise(clean, noise, t), t).sample
        loss = F.mse_loss(out.float(), scheduler.get_velocity(clean, noise, t).float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    return step, model


def kernels_off():
    """Our C++ kernels off: GroupNorm, modulation and SiLU as separate PyTorch ops, the output conv
    and the upsampling's interleave by PyTorch (GENMODELS_FUSED_KERNELS=0)."""
    return mock.patch.dict(os.environ, {fused.ENV: "0"})


def textbook_upsample():
    """Run our Upsample layers in the textbook form (nearest x2, then the 3x3 conv at 2x resolution)."""
    return mock.patch.object(layers, "nearest_up_conv3x3", upsample_conv.reference)


def ours_under(context):
    """A builder of ``ours`` whose every step runs inside ``context()`` (an ablation row)."""
    def build(device: str):
        step, model = ours(device)

        def ablated_step():
            with context():
                step()

        return ablated_step, model

    return build


BUILDERS = {"ours": ours, "peer": peer, "unfused": ours_under(kernels_off),
            "textbook_upsample": ours_under(textbook_upsample)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(step, steps: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - start


def train_flops_per_image(step, *, nominal: bool = True) -> float:
    """Matmul/conv/attention FLOPs of one whole training step, per image: with ``nominal``, those of
    the textbook network (upsampling convs at the fine resolution), else those executed. Counted with
    our C++ kernels off, because the counter does not see inside them (the output conv's FLOPs)."""
    with (FlopCounterMode(display=False) as counter, kernels_off(),
          textbook_upsample() if nominal else contextlib.nullcontext()):
        step()
    return counter.get_total_flops() / BATCH


def gemm_peak_gflops(device: str, repeats: int = 5) -> dict:
    """Best fp32 GFLOP/s of a large matrix product on this device and thread count, through each
    library a training step uses: BLAS (``a @ b``: MKL on CPU, cuBLAS on CUDA) and oneDNN/cuDNN
    (a 1x1 convolution is the same product). On an AMD CPU MKL's product can be the slower of the
    two, so the peak is the better one: our fraction of it is then the conservative figure."""
    n = 8192 if device.startswith("cuda") else 2048
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    # [1, n, 32, 32] x [n, n, 1, 1] in channels_last: a (1024 x n) @ (n x n) product
    x = torch.randn(1, n, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1, device=device).contiguous(memory_format=torch.channels_last)
    probes = {"blas": (lambda: a @ b, 2 * n**3), "conv1x1": (lambda: F.conv2d(x, w), 2 * 1024 * n * n)}
    result = {}
    for name, (fn, flops) in probes.items():
        for _ in range(2):
            fn()
        result[name] = flops / min(timed(fn, 1, device) for _ in range(repeats)) / 1e9
    result["peak"] = max(result.values())
    return result


def peak_memory_mib(which: str, device: str, threads: int) -> dict:
    """Peak memory of a fresh process that builds ``which`` and takes 3 steps (see --peak-memory)."""
    out = subprocess.run([sys.executable, __file__, "--peak-memory", which, "--device", device,
                          "--threads", str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak resident set. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    fork + exec, so a child would report its parent's peak if that is higher."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_peak_memory(which: str, device: str) -> None:
    step, _ = BUILDERS[which](device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = peak_rss_mib()
    for _ in range(3):
        step()
    if device.startswith("cuda"):
        print(json.dumps({"peak_mib": torch.cuda.max_memory_allocated() / 2**20, "kind": "CUDA allocated"}))
    else:
        print(json.dumps({"peak_mib": peak_rss_mib(), "before_steps_mib": before, "kind": "process RSS"}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=3, help="A B B A rounds; the median is reported")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    parser.add_argument("--unfused", action="store_true",
                        help="also time our trainer without its C++ kernels (GroupNorm+SiLU, output conv; a row)")
    parser.add_argument("--textbook-upsample", action="store_true",
                        help="also time our trainer with upsample-then-conv at the fine resolution (a row)")
    parser.add_argument("--peak-memory", choices=list(BUILDERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_memory:
        return measure_peak_memory(args.peak_memory, args.device)
    if args.device == "cpu" and fused.mode() != "0":  # "ours" means with the kernels: build them if missing
        try:
            fused.build()
        except KernelBuildError as exc:
            print(f"note: {exc}; timing ours with PyTorch ops", file=sys.stderr)

    names = ["ours", "peer"] + (["unfused"] if args.unfused else []) + (
        ["textbook_upsample"] if args.textbook_upsample else [])
    models = {name: BUILDERS[name](args.device) for name in names}
    for step, _ in models.values():  # warm-up: oneDNN/cuDNN primitives, allocator
        for _ in range(3):
            step()
    sync(args.device)
    flops = {name: train_flops_per_image(step) for name, (step, _) in models.items()}
    executed = {name: train_flops_per_image(step, nominal=False) for name, (step, _) in models.items()}
    params = {name: sum(p.numel() for p in model.parameters()) for name, (_, model) in models.items()}
    probes = gemm_peak_gflops(args.device)
    gemm = probes["peak"]

    rate = {name: [] for name in models}
    for _ in range(args.rounds):
        seconds = dict.fromkeys(models, 0.0)
        for name in names + names[::-1]:
            seconds[name] += timed(models[name][0], args.steps, args.device)
        for name in models:
            rate[name].append(2 * args.steps * BATCH / seconds[name])
    ratio = statistics.median(o / p for o, p in zip(rate["ours"], rate["peer"]))
    img_s = {name: statistics.median(r) for name, r in rate.items()}
    memory = {name: peak_memory_mib(name, args.device, args.threads) for name in ("ours", "peer")}

    result = {
        "date": datetime.date.today().isoformat(), "device": args.device, "threads": args.threads,
        "torch": torch.__version__, "batch": BATCH,
        "ours_img_s": round(img_s["ours"], 1), "peer_img_s": round(img_s["peer"], 1), "ratio": round(ratio, 3),
        "ours_img_s_rounds": [round(r, 1) for r in rate["ours"]],
        "peer_img_s_rounds": [round(r, 1) for r in rate["peer"]],
        "gemm_peak_gflops": round(gemm, 1), "gemm_blas_gflops": round(probes["blas"], 1),
        "gemm_conv1x1_gflops": round(probes["conv1x1"], 1),
        "ours_gflops": round(flops["ours"] * img_s["ours"] / 1e9, 1),
        "peer_gflops": round(flops["peer"] * img_s["peer"] / 1e9, 1),
        "ours_executed_gflops": round(executed["ours"] * img_s["ours"] / 1e9, 1),
        "ours_train_gflop_per_image": round(flops["ours"] / 1e9, 4),
        "ours_executed_gflop_per_image": round(executed["ours"] / 1e9, 4),
        "peer_train_gflop_per_image": round(flops["peer"] / 1e9, 4),
        "ours_params": params["ours"], "peer_params": params["peer"],
        "peak_mem_mib": round(memory["ours"]["peak_mib"]), "peer_peak_mem_mib": round(memory["peer"]["peak_mib"]),
        "peak_mem_kind": memory["ours"]["kind"], "fused_kernel": fused.status(),
    }
    if args.unfused:
        result["unfused_img_s"] = round(img_s["unfused"], 1)
        result["fused_speedup"] = round(statistics.median(o / u for o, u in zip(rate["ours"], rate["unfused"])), 3)
    if args.textbook_upsample:
        result["textbook_upsample_img_s"] = round(img_s["textbook_upsample"], 1)
        result["upsample_speedup"] = round(statistics.median(
            o / u for o, u in zip(rate["ours"], rate["textbook_upsample"])), 3)
    if args.json:
        print(json.dumps(result))
        return
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, batch {BATCH}, "
          f"median of {args.rounds} A-B-B-A rounds x {args.steps} steps; fp32 GEMM peak {gemm:.0f} GFLOP/s "
          f"(best of BLAS {probes['blas']:.0f}, 1x1 conv {probes['conv1x1']:.0f})\n")
    print(f"| model | params | train GFLOP/img (executed) | img/s | GFLOP/s (executed) | of GEMM peak "
          f"| peak memory ({result['peak_mem_kind']}) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    labels = {"ours": "genmodels UNet (mnist-ddpm), genmodels trainer",
              "peer": "diffusers UNet2DModel (16,56,64), diffusers training loop",
              "unfused": "genmodels, C++ kernels off: PyTorch ops (GENMODELS_FUSED_KERNELS=0)",
              "textbook_upsample": "genmodels, upsample then 3x3 conv at the fine resolution"}
    for name in models:
        achieved = flops[name] * img_s[name] / 1e9
        peak = f"{memory[name]['peak_mib']:.0f} MiB" if name in memory else "-"
        print(f"| {labels[name]} | {params[name] / 1e6:.3f} M | {flops[name] / 1e9:.3f} ({executed[name] / 1e9:.3f}) "
              f"| {img_s[name]:.0f} | {achieved:.0f} ({executed[name] * img_s[name] / 1e9:.0f}) "
              f"| {100 * achieved / gemm:.0f} % | {peak} |")
    print(f"\nC++ kernels (GroupNorm+SiLU, output conv, upsampling interleave): {result['fused_kernel']}")
    print(f"ratio ours / peer (img/s, median of per-round ratios): {ratio:.2f}x")
    if args.unfused:
        print(f"ratio ours / ours without the C++ kernels: {result['fused_speedup']:.2f}x")
    if args.textbook_upsample:
        print(f"ratio ours / ours with textbook upsampling: {result['upsample_speedup']:.2f}x")


if __name__ == "__main__":
    main()
