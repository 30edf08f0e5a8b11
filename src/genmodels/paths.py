"""Where genmodels keeps what it builds once and reuses: feature and judge networks, reference
statistics, the compiled fused kernel."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$GENMODELS_CACHE``, default ``~/.cache/genmodels``."""
    return Path(os.environ.get("GENMODELS_CACHE", Path.home() / ".cache" / "genmodels"))
