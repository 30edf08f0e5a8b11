"""The UNet with its new slots (cross-attention, concatenated conditions, residuals) switched off
against the UNet before they existed, in the same process on the same machine.

The "before" network is the source of ``src/genmodels/nn/unet.py`` at ``--before`` (a git
revision, default c9ddfbb: the last commit before the seams), loaded as its own module; both get
the same weights (the state dicts have the same names, which is checked), the demo config
(mnist-ddpm: base 32, channel_mult 1-2-2, lean up path, class-unconditional) and, with
``--classes``, the mnist-cfg layout with 10 classes. Rounds alternate the two so machine drift
hits both alike; every figure is the median over rounds.

    python benchmarks/unet_seams.py                 # training step and inference, both layouts
    python benchmarks/unet_seams.py --rounds 7 --json
"""

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from genmodels.nn import UNet

ROOT = Path(__file__).resolve().parents[1]
DEMO = dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,), extra_up_block=False)


def unet_before(revision: str):
    """The UNet class as it was at ``revision``."""
    source = subprocess.run(["git", "show", f"{revision}:src/genmodels/nn/unet.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "unet_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("unet_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.UNet


def pair(before_cls, options):
    new = UNet(**options)
    old = before_cls(**options)
    assert list(new.state_dict()) == list(old.state_dict()), "the state dicts differ: not the same network"
    old.load_state_dict(new.state_dict())
    return {"before": old, "now": new}


def inputs(batch, classes, generator):
    x = torch.randn(batch, 1, 28, 28, generator=generator).contiguous(memory_format=torch.channels_last)
    t = torch.rand(batch, generator=generator) * 1000
    y = None if classes is None else torch.randint(0, classes, (batch,), generator=generator)
    return x, t, y


def call(name, net, x, t, y):
    if y is None:
        return net(x, t)
    return net(x, t, {"y": y}) if name == "now" else net(x, t, y)


def train_seconds(name, net, opt, x, t, y, target, steps):
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.mse_loss(call(name, net, x, t, y), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


@torch.inference_mode()
def infer_seconds(name, net, x, t, y, steps):
    start = time.perf_counter()
    for _ in range(steps):
        call(name, net, x, t, y)
    return (time.perf_counter() - start) / steps


def measure(layout, classes, *, before_cls, batch, steps, rounds):
    nets = pair(before_cls, {**DEMO, "num_classes": classes})
    g = torch.Generator().manual_seed(0)
    x, t, y = inputs(batch, classes, g)
    target = torch.randn(x.shape, generator=g)
    with torch.no_grad():  # the same function: bit for bit
        same = torch.equal(call("before", nets["before"].eval(), x, t, y), call("now", nets["now"].eval(), x, t, y))
    opts = {}
    for name, net in nets.items():
        net.to(memory_format=torch.channels_last).train()
        opts[name] = torch.optim.AdamW(net.parameters(), lr=1e-4)
        train_seconds(name, net, opts[name], x, t, y, target, 2)  # warm-up
    times = {name: {"train": [], "infer": []} for name in nets}
    for r in range(rounds):
        order = list(nets) if r % 2 == 0 else list(nets)[::-1]
        for name in order:
            net = nets[name].train()
            times[name]["train"].append(train_seconds(name, net, opts[name], x, t, y, target, steps))
            times[name]["infer"].append(infer_seconds(name, net.eval(), x, t, y, steps))
    median = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in times.items()}
    return {"layout": layout, "bit_identical_output": same,
            "before_train_img_s": batch / median["before"]["train"], "now_train_img_s": batch / median["now"]["train"],
            "train_ratio": median["before"]["train"] / median["now"]["train"],
            "before_infer_ms": 1000 * median["before"]["infer"], "now_infer_ms": 1000 * median["now"]["infer"],
            "infer_ratio": median["before"]["infer"] / median["now"]["infer"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="c9ddfbb", help="git revision of the UNet to compare with")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from genmodels.nn import fused

    before_cls = unet_before(args.before)
    rows = [measure(layout, classes, before_cls=before_cls, batch=args.batch, steps=args.steps, rounds=args.rounds)
            for layout, classes in (("mnist-ddpm (unconditional)", None), ("mnist-cfg (10 classes)", 10))]
    if args.json:
        print(json.dumps({"kernels": fused.status(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "rows": rows}))
        return
    print(f"UNet {args.before} vs now, options off; batch {args.batch}, {args.rounds} rounds x {args.steps} steps, "
          f"{torch.get_num_threads()} threads, kernels {fused.status()}")
    print(f"{'layout':<28} {'same output':>11} {'train img/s before':>18} {'now':>7} {'ratio':>6} "
          f"{'infer ms before':>15} {'now':>7} {'ratio':>6}")
    for r in rows:
        print(f"{r['layout']:<28} {str(r['bit_identical_output']):>11} {r['before_train_img_s']:>18.1f} "
              f"{r['now_train_img_s']:>7.1f} {r['train_ratio']:>6.3f} {r['before_infer_ms']:>15.1f} "
              f"{r['now_infer_ms']:>7.1f} {r['infer_ratio']:>6.3f}")


if __name__ == "__main__":
    sys.exit(main())
