import os

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest-xdist runs workers side by side.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Each test session gets its own cache dir, so no test depends on a warm ~/.cache.
    Session-scoped, so module-scoped fixtures (trained runs, feature networks) see it too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENMODELS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


TINY_UNET = [
    "model.base_channels=16", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
    "model.attn_resolutions=[14]", "model.num_heads=2",
]


@pytest.fixture
def tiny_mnist_overrides():
    """A UNet small enough to take a training step in ~0.1 s, logging every step."""
    return TINY_UNET + [
        "train.batch_size=16", "train.log_every_images=16", "train.sample_every_images=100000",
        "train.checkpoint_every_images=100000", "train.warmup_images=0", "train.device=cpu",
        "train.lr=1e-3",
    ]
