import os
import shutil

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest-xdist runs workers side by side.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Each test session gets its own cache dir, so no test depends on a warm ~/.cache.
    Session-scoped, so module-scoped fixtures (trained runs, feature networks) see it too.
    Except the C++ kernels: every session uses the ones `genmodels build-kernels` (scripts/setup)
    compiled, found in the real kernels dir, recorded before the cache moves."""
    from genmodels.paths import kernels_dir

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENMODELS_KERNELS_DIR", str(kernels_dir()))
        mp.setenv("GENMODELS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="session")
def fused_kernels(_isolated_cache):
    """The C++ CPU kernels that `genmodels build-kernels` (scripts/setup) built: the kernel tests fail
    without them, rather than pass on the PyTorch fallback; skipped only where nothing can build them."""
    from genmodels.nn import fused

    module = fused.load()
    if module is None:
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            pytest.skip("no C++ compiler: the kernels cannot be built here")
        pytest.fail(f"these tests need the C++ CPU kernels; in {fused.build_dir()} they are {fused.status()} "
                    "(scripts/setup does), then run the tests again", pytrace=False)
    return module


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
