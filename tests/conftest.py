import importlib
import os
import re
import shutil
import tomllib

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest-xdist runs workers side by side.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# What `scripts/setup test` installs: pyproject.toml's extras "test" (tools and metric oracles),
# "peers" (diffusers) and "text" (the MiniLM encoder). The distributions whose module is named otherwise:
PEER_EXTRAS = ("test", "peers", "text")
IMPORT_NAMES = {"pot": "ot", "pytest-xdist": "xdist"}
INSTALL = "scripts/setup test (or: .venv/bin/python -m pip install -e '.[test,peers,text]')"


def peer_modules(pyproject) -> dict:
    """{distribution: module} for every requirement of the extras `scripts/setup test` installs."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    names = [re.match(r"[A-Za-z0-9._-]+", req).group(0).lower() for e in PEER_EXTRAS for req in extras[e]]
    return {name: IMPORT_NAMES.get(name, name.replace("-", "_")) for name in names}


def pytest_sessionstart(session):
    """With GENMODELS_REQUIRE_PEERS=1 (scripts/test sets it), a missing peer stops the session
    instead of letting its oracle tests skip: a green run then always includes them."""
    if os.environ.get("GENMODELS_REQUIRE_PEERS", "0") in ("", "0"):
        return
    missing = []
    for dist, module in peer_modules(session.config.rootpath / "pyproject.toml").items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            missing.append(dist if e.name == module else f"{dist} ({e})")
        except Exception as e:  # installed but broken (say, built for another torch): as good as missing
            missing.append(f"{dist} ({type(e).__name__}: {e})")
    if missing:
        pytest.exit(f"test oracle(s) missing: {', '.join(missing)}; install with {INSTALL} "
                    "(GENMODELS_REQUIRE_PEERS is set, so they may not skip)", returncode=pytest.ExitCode.USAGE_ERROR)


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
