"""Run by tests/test_distributed.py under torchrun: train the toy config half-way, resume it to
the end, then dump this rank's weights (rank 0 alone writes the run directory, so rank 1's
weights are otherwise invisible).

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py RUN_DIR HALF_IMAGES key=value ...
"""

import sys

import torch
from safetensors.torch import save_file

from genmodels.config import load_config
from genmodels.train import distributed
from genmodels.train.checkpoint import flat_state
from genmodels.train.run import prepare


def main(run_dir, half_images, *overrides):
    dist, device = distributed.setup(torch.device("cpu"))
    try:
        prepare(load_config("toy-ddpm", [*overrides, f"train.images={half_images}"]), run_dir,
                dist=dist, device=device).fit()
        trainer = prepare(load_config("toy-ddpm", list(overrides)), run_dir, resume=True, dist=dist, device=device)
        trainer.fit()
        weights = flat_state({"net": trainer.modules["net"], "ema": trainer.emas["net"].module})
        save_file(weights, f"{run_dir}/rank{dist.rank}.safetensors")
    finally:
        distributed.teardown(dist)


if __name__ == "__main__":
    main(*sys.argv[1:])
