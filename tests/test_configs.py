"""Every bundled config is usable as shipped: it loads, trains a step on its own data, writes a
run directory that `genmodels.load` rebuilds, and samples finite values of the data's shape."""

from pathlib import Path

import pytest
import torch

import genmodels
from genmodels.config import load_config
from genmodels.data import load_dataset
from genmodels.edit.inpaint_model import inpaint_with_model
from genmodels.errors import ConfigError, DataError
from genmodels.train.run import train

CONFIGS = sorted(p.stem for p in (Path(genmodels.__file__).parent / "configs").glob("*.yaml"))


# composed runs (ControlNets, consistency distillation): on a tiny run of the base config they build on
CONTROL_BASES = {"mnist-controlnet": "mnist-cfg", "emoji-controlnet": "emoji-ddpm", "mnist-cd": "mnist-edm",
                 "toy-cd": "toy-edm"}


@pytest.mark.parametrize("name", CONFIGS)
def test_bundled_config_trains_a_step_and_samples(name, tmp_path):
    tiny = ["train.batch_size=8", "train.images=8", "train.device=cpu", "train.warmup_images=0"]
    # autoencoders: D's features as the perceptual term, so no dataset feature CNN is trained here
    # (the feature_cnn term is tested in test_autoencoder.py on digits)
    ae_tiny = tiny + ["ae.perceptual=discriminator"]
    if name.endswith("-ae"):
        tiny = ae_tiny
    latent = name.endswith("-ldm") or name in ("emoji-t2i", "emoji-inpaint")
    if latent:  # latent diffusion: on the latents of the matching autoencoder config
        with pytest.raises(ConfigError, match="latent.autoencoder is required"):
            load_config(name)
        ae = name.split("-")[0] + "-ae"
        try:
            train(load_config(ae, ae_tiny), tmp_path / "ae")
        except DataError as e:
            pytest.skip(str(e))
        tiny = tiny + [f"latent.autoencoder={tmp_path / 'ae'}"]
    if name in CONTROL_BASES:
        base = CONTROL_BASES[name]
        try:
            train(load_config(base, tiny), tmp_path / "base")
        except DataError as e:
            pytest.skip(str(e))
        tiny = tiny + [f"model.base={tmp_path / 'base'}"]
    cfg = load_config(name, tiny)
    try:
        load_dataset(cfg.data.name, split="train", n_points=64)
    except DataError as e:  # e.g. Fashion-MNIST's Debian package on a machine without root
        pytest.skip(str(e))
    if cfg.family == "classifier":  # trained here; its use (classifier guidance) is tested elsewhere
        train(cfg, tmp_path / "run")
        assert (tmp_path / "run" / "ema.safetensors").is_file()
        return
    train(cfg, tmp_path / "run")
    pipe = genmodels.load(tmp_path / "run", device="cpu")
    x = pipe.sample(2, seed=0, progress=False)
    assert x.shape[1:] == pipe.data_shape and torch.isfinite(x).all()
    if "mask" in getattr(pipe, "cond_keys", ()):  # inpainting configs: plain sampling above (a full mask), and a region
        out = inpaint_with_model(pipe, x, "center", seed=0, steps=4)
        assert torch.isfinite(out).all() and torch.equal(out[..., :1, :], x[..., :1, :])
    if cfg.text.captions:  # text-to-image configs take a prompt
        x = pipe.sample(2, seed=0, prompt="a thick 7", progress=False)
        assert x.shape[1:] == pipe.data_shape and torch.isfinite(x).all()
