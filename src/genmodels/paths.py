"""Where genmodels keeps what it builds once and reuses: feature and judge networks, reference
statistics, the compiled C++ kernels."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$GENMODELS_CACHE``, default ``~/.cache/genmodels``."""
    return Path(os.environ.get("GENMODELS_CACHE", Path.home() / ".cache" / "genmodels"))


def kernels_dir() -> Path:
    """``$GENMODELS_KERNELS_DIR``, default ``cache_dir() / "ext"``: its own variable so that a test
    session can isolate the cache and still reuse the kernels ``scripts/setup`` compiled."""
    return Path(os.environ.get("GENMODELS_KERNELS_DIR", cache_dir() / "ext"))
