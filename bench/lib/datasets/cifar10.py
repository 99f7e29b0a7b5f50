"""CIFAR-10 (Krizhevsky 2009) through torchvision's real loader.

Not exercised offline in this project's CI (the archive is not available there); on a
connected machine torchvision downloads it into ``<data root>/cifar10``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.core.registry import register_dataset
from bench.lib.datasets.base import Dataset, RawData, folder_lock


@register_dataset("cifar10")
class CIFAR10(Dataset):
    """CIFAR-10, 50 000 train / 10 000 test, 32x32 RGB (downloads ~170 MB when online)."""

    folder = "cifar10"
    expected_files = ("cifar-10-python.tar.gz",)
    default_sizes = {"members": 40000, "val": 2000, "nonmembers": 8000}
    source = "torchvision.datasets.CIFAR10 (Krizhevsky 2009)"
    input_stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

    def load(self, root: Path, download: bool = True) -> RawData:
        from torchvision.datasets import CIFAR10 as TV

        folder = self.writable_folder(root)
        try:
            with folder_lock(folder):  # torchvision extracts in place: one process at a time
                train = TV(str(folder), train=True, download=download)
                test = TV(str(folder), train=False, download=download)
        except Exception as e:
            raise self.missing_error(root, e) from None
        tx = np.transpose(train.data, (0, 3, 1, 2)).astype(np.float32) / 255.0
        vx = np.transpose(test.data, (0, 3, 1, 2)).astype(np.float32) / 255.0
        return RawData(tx, np.asarray(train.targets, np.int64), vx, np.asarray(test.targets, np.int64),
                       list(train.classes))
