"""Data: in-memory datasets normalised to [-1, 1], toy 2-D distributions, endless batches.

    from genmodels.data import load_dataset, InfiniteBatches
    data = load_dataset("mnist", split="train")           # Dataset, x [4500, 1, 28, 28]
    batches = InfiniteBatches(data, 128, seed=0)
    batch = next(batches)                                  # {"x": [128, 1, 28, 28], "y": [128]}
    captions = caption_set(data, "descriptive")            # texts[i]: "a thin 2, upright, narrow", ...
"""

from genmodels.data.captions import CAPTION_STYLES, Captions, Prompts, caption_set, heldout_prompts, prompt_set
from genmodels.data.datasets import DATASET_NAMES, SPLITS, Dataset, exclude_classes, load_dataset, run_split
from genmodels.data.folder import load_image_folder
from genmodels.data.loader import InfiniteBatches, derive_seed
from genmodels.data.toy import TOY_DISTRIBUTIONS, ToyDistribution

__all__ = [
    "Dataset",
    "load_dataset",
    "run_split",
    "exclude_classes",
    "DATASET_NAMES",
    "SPLITS",
    "InfiniteBatches",
    "derive_seed",
    "TOY_DISTRIBUTIONS",
    "ToyDistribution",
    "load_image_folder",
    "CAPTION_STYLES",
    "Captions",
    "Prompts",
    "caption_set",
    "prompt_set",
    "heldout_prompts",
]
