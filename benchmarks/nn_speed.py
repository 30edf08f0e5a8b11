"""Training and inference speed of UNet configurations on the CPU, with the diffusers peer.

Measures, per configuration and memory format, images per second of one training step
(forward + MSE backward + AdamW step) at batch 64 on 28x28x1, and milliseconds per forward pass
at batch 64 under ``torch.inference_mode``. Every number is the best of ``--repeats`` timed runs
(the machine is shared), each of ``--steps`` steps after warm-up.

    python benchmarks/nn_speed.py                      # all candidates, both formats, peer
    python benchmarks/nn_speed.py --only default --formats contiguous channels_last
    python benchmarks/nn_speed.py --threads 2 --steps 8 --repeats 3 --no-peer
"""

import argparse
import time

import torch
import torch.nn.functional as F

from genmodels.nn import UNet

CANDIDATES: dict[str, dict] = {
    "default": {},  # whatever UNet() builds
    "b32 m122 r1 a7": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,)),
    "b32 m122 r2 a7": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,)),
    "b32 m122 r1 none": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=()),
    "b32 m122 r1 a7+14": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7, 14)),
    "b32 m124 r1 a7": dict(base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(7,)),
    "b32 m124 r2 a7": dict(base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=(7,)),
    "b32 m222 r1 a7": dict(base_channels=32, channel_mult=(2, 2, 2), num_res_blocks=1, attn_resolutions=(7,)),
    "b48 m122 r1 a7": dict(base_channels=48, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,)),
    "b48 m122 r2 a7": dict(base_channels=48, channel_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,)),
    "b64 m122 r1 a7": dict(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,)),
    "b64 m112 r1 a7": dict(base_channels=64, channel_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(7,)),
    # lean: no ADM extra up block (extra_up_block=False)
    "lean b32 m122 r1 a7": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,),
                                extra_up_block=False),
    "lean b24 m123 r1 a7": dict(base_channels=24, channel_mult=(1, 2, 3), num_res_blocks=1, attn_resolutions=(7,),
                                extra_up_block=False),
    "lean b16 m144 r1 a7": dict(base_channels=16, channel_mult=(1, 4, 4), num_res_blocks=1, attn_resolutions=(7,),
                                extra_up_block=False),
    "lean b32 m124 r1 a7": dict(base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(7,),
                                extra_up_block=False),
}


def peer_unet(size: int):
    """diffusers UNet2DModel of ~1.1M parameters (plain DDPM layout), the speed reference."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def measure(model: torch.nn.Module, *, size: int, batch: int, steps: int, repeats: int,
            channels_last: bool, peer: bool = False, bf16: bool = False) -> tuple[float, float]:
    """Returns (train img/s, inference ms per batch), each the best over ``repeats``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=gen).to(memory_format=fmt)
    target = torch.randn(batch, 1, size, size, generator=gen)
    t = torch.rand(batch, generator=gen) * 1000

    def forward():
        # bf16 autocast: oneDNN runs convs/matmuls in bf16 on CPUs with AVX512-BF16 / AMX.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, t)
        return (out.sample if peer else out).float()

    def train_step():
        loss = F.mse_loss(forward(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    for _ in range(2):  # warm-up: oneDNN primitive creation, allocator
        train_step()
    best_train = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            train_step()
        best_train = min(best_train, (time.perf_counter() - start) / steps)

    model.eval()
    best_infer = float("inf")
    with torch.inference_mode():
        forward()
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                forward()
            best_infer = min(best_infer, (time.perf_counter() - start) / steps)
    return batch / best_train, 1000 * best_infer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--formats", nargs="*", default=["contiguous", "channels_last"],
                        choices=["contiguous", "channels_last"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"best of {args.repeats} x {args.steps} steps\n")
    print("| config | format | params | train img/s (fwd+bwd+AdamW) | forward ms (inference) |")
    print("|---|---|---:|---:|---:|")
    rows = [(name, CANDIDATES[name], 28, False) for name in args.only]
    if not args.no_peer:
        rows += [("diffusers UNet2DModel (32,64,64) r1, 28px", None, 28, True),
                 ("diffusers UNet2DModel (32,64,64) r1, 32px", None, 32, True)]
    variants = [(fmt, False) for fmt in args.formats] + [(fmt, True) for fmt in args.formats if args.bf16]
    for name, kwargs, size, peer in rows:
        for fmt, bf16 in variants:
            model = peer_unet(size) if peer else UNet(**kwargs)
            params = sum(p.numel() for p in model.parameters())
            ips, ms = measure(model, size=size, batch=args.batch, steps=args.steps, repeats=args.repeats,
                              channels_last=fmt == "channels_last", peer=peer, bf16=bf16)
            label = fmt + (" + bf16 autocast" if bf16 else "")
            print(f"| {name} | {label} | {params / 1e6:.2f}M | {ips:.0f} | {ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
