"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) through torchvision's real loader."""

from __future__ import annotations

from pathlib import Path

from bench.core.registry import register_dataset
from bench.lib.datasets.base import Dataset, RawData
from bench.lib.datasets.mnist import load_torchvision


@register_dataset("fashion-mnist")
class FashionMNIST(Dataset):
    """Fashion-MNIST, 60 000 train / 10 000 test, 28x28 grey, 10 clothing classes."""

    folder = "fashion-mnist"
    expected_files = tuple(f.replace("MNIST/", "FashionMNIST/") for f in (
        "MNIST/raw/train-images-idx3-ubyte.gz", "MNIST/raw/train-labels-idx1-ubyte.gz",
        "MNIST/raw/t10k-images-idx3-ubyte.gz", "MNIST/raw/t10k-labels-idx1-ubyte.gz"))
    default_sizes = {"members": 48000, "val": 2000, "nonmembers": 10000}
    source = "torchvision.datasets.FashionMNIST (Zalando Research)"
    input_stats = ((0.2860,), (0.3530,))
    public_partner = "mnist"
    #: DataLens' README settings (AI-secure/DataLens): epsilon -> (topk, sigma, thresh beta, z_dim)
    paper_settings = {"datalens": {1.0: (200, 5000.0, 0.7, 50), 10.0: (350, 1000.0, 0.27, 64)}}

    def load(self, root: Path, download: bool = True) -> RawData:
        from torchvision.datasets import FashionMNIST as TV

        return load_torchvision(self, TV, root, download)
