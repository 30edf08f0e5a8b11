"""A family written the way a contributor would add one, in this file alone: a new conditioning
key, a new config section, a new sample option, a new metric and a composed-run variant, each
joined to the core by one registry line (marked ``# registry``). tests/test_plugin_family.py
checks that training, ``genmodels.load``, the CLI and the evaluation protocol all pick them up.

The model: pixels are Gaussian with a learned mean image and per-pixel std, shifted by a learned
gain times the image's brightness ``b`` (its mean pixel value), the new condition:
x ~ N(mean + gain * b, std^2). With ``model.base`` set it builds on another such run: the base's
mean image is frozen and only gain and std are learned.
"""

from dataclasses import dataclass

import torch
from torch import nn

from genmodels.cond import COND_KEYS, CondKey
from genmodels.config import register_section
from genmodels.families.base import Family, PipelineBase, SampleOption, TrainParts, register
from genmodels.metrics.registry import METRICS, Metric
from genmodels.samplers import SeededNoise
from genmodels.train.trainer import Phase


@dataclass
class BrightnessConfig:
    min_log_std: float = -3.0  # the std's floor, as log std


class BrightnessModel(nn.Module):
    cond_keys = frozenset(["brightness"])

    def __init__(self, *, channels=1, image_size=28):
        super().__init__()
        shape = (channels, image_size, image_size)
        self.mean, self.gain, self.log_std = (nn.Parameter(torch.zeros(shape)) for _ in range(3))

    def forward(self, cond):
        b = cond.get("brightness")
        b = torch.zeros(1) if b is None else b
        return self.mean + self.gain * b.reshape(-1, 1, 1, 1)


def brightness(x):
    return x.flatten(1).mean(1)


class BrightnessFamily(Family):
    name = "brightness"
    sample_options = (SampleOption("brightness", "float", None, "brightness: the mean pixel value asked for"),)

    def network_options(self, cfg, dataset):
        c, h, _ = dataset.shape
        return {**cfg.model.options, "channels": c, "image_size": h}

    def build(self, cfg, options):
        return {"model": BrightnessModel(**options)}

    def training(self, ctx):
        model = ctx.modules["model"]
        base = ctx.bases.get("model.base")
        if base is not None:  # a composed run: the frozen base's mean, learn the rest
            with torch.no_grad():
                model.mean.copy_(base.modules["model"].mean)
            model.mean.requires_grad_(False)
        floor = ctx.cfg.brightness.min_log_std

        def loss(batch, generator):
            x = ctx.to_device(batch)["x"]
            mu = model({"brightness": brightness(x)})  # the data fill the new key
            log_std = model.log_std.clamp(min=floor)
            nll = 0.5 * ((x - mu) / log_std.exp()).square() + log_std
            return nll.flatten(1).mean(1), {}

        params = [p for p in model.parameters() if p.requires_grad]
        return TrainParts([Phase("fit", model, loss, ctx.adamw(params, lr=0.05), None)], {"model": ctx.ema("model")})

    def load(self, run):
        return BrightnessPipeline(run.run_dir, run.config, run.modules["model"], run.data_shape, run.class_names,
                                  run.device)


@dataclass
class BrightnessPipeline(PipelineBase):
    run_dir: object
    config: object
    net: nn.Module
    data_shape: tuple
    class_names: tuple
    device: torch.device
    net_num_classes = None
    family_name = "brightness model"

    def sample_settings(self, **given):
        return {}

    @torch.inference_mode()
    def sample(self, n=64, *, seed=0, brightness=None, cond=None, labels=None, batch_size=64, progress=False,
               dist=None, **options):
        cond = dict(cond or {})
        if brightness is not None:
            cond["brightness"] = torch.full((n,), float(brightness))
        z = SeededNoise(range(seed, seed + n), self.data_shape)()
        return (self.net(cond) + self.net.log_std.exp() * z).clamp(-1, 1)


COND_KEYS["brightness"] = CondKey("mean pixel value [B]", lambda net, v: torch.zeros_like(v))  # registry
register_section("brightness", BrightnessConfig)  # registry
register(BrightnessFamily())  # registry
METRICS["mean_brightness"] = Metric("mean_brightness", ("image",),  # registry
                                    lambda inp: {"mean_brightness": brightness(inp.samples).mean().item()},
                                    "mean pixel value of the samples")
