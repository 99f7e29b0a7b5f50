"""MNIST (LeCun et al. 1998) through torchvision's real loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..registry import register_dataset
from .base import Dataset, RawData


def load_torchvision(ds: Dataset, cls, root: Path, download: bool) -> RawData:
    folder = ds.writable_folder(root)
    try:
        train = cls(str(folder), train=True, download=download)
        test = cls(str(folder), train=False, download=download)
    except Exception as e:  # offline download failures surface as RuntimeError/URLError
        raise ds.missing_error(root, e) from None
    tx = train.data.numpy().astype(np.float32)[:, None] / 255.0
    vx = test.data.numpy().astype(np.float32)[:, None] / 255.0
    return RawData(tx, train.targets.numpy().astype(np.int64), vx, test.targets.numpy().astype(np.int64),
                   list(train.classes))


_FILES = ("MNIST/raw/train-images-idx3-ubyte.gz", "MNIST/raw/train-labels-idx1-ubyte.gz",
          "MNIST/raw/t10k-images-idx3-ubyte.gz", "MNIST/raw/t10k-labels-idx1-ubyte.gz")


@register_dataset("mnist")
class MNIST(Dataset):
    """MNIST digits, 60 000 train / 10 000 test, 28x28 grey."""

    folder = "mnist"
    expected_files = _FILES
    default_sizes = {"members": 48000, "val": 2000, "nonmembers": 10000}
    source = "torchvision.datasets.MNIST (LeCun, Cortes, Burges)"

    def load(self, root: Path, download: bool = True) -> RawData:
        from torchvision.datasets import MNIST as TV

        return load_torchvision(self, TV, root, download)
