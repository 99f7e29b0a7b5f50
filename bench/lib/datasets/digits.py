"""scikit-learn's embedded 8x8 digits (UCI optical digits): a zero-download quickstart.

It has no official test split; a fixed 30 % stratified test split (random_state 0, independent
of the cell seed) plays that role, so test numbers are comparable across seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.core.registry import register_dataset
from bench.lib.datasets.base import Dataset, RawData


@register_dataset("digits")
class Digits(Dataset):
    """sklearn digits: 1 797 images, 8x8 grey, 10 classes; ships with scikit-learn."""

    official_test_split = False

    folder = "digits"
    default_sizes = {"members": 600, "val": 200, "nonmembers": 457}
    source = "sklearn.datasets.load_digits (UCI ML optical recognition of handwritten digits)"

    def load(self, root: Path, download: bool = True) -> RawData:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = (d.images.astype(np.float32) / 16.0)[:, None]
        y = d.target.astype(np.int64)
        tx, vx, ty, vy = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
        return RawData(tx, ty, vx, vy, [str(c) for c in range(10)])
