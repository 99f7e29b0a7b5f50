"""MNIST (LeCun et al. 1998) through torchvision's real loader."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from bench.core.errors import BenchError
from bench.core.registry import register_dataset
from bench.lib.datasets.base import Dataset, RawData, folder_lock


def corrupt_file_error(ds: Dataset, cls, folder: Path) -> BenchError | None:
    """A present raw file that is not the one torchvision expects: a ``.gz`` whose MD5 differs from
    torchvision's, or an extracted copy that differs from its (correct) ``.gz`` decompressed.
    None when every present file checks out (then the files are missing, not corrupt)."""
    from torchvision.datasets.utils import calculate_md5

    raw = folder / cls.__name__ / "raw"
    for fname, md5 in getattr(cls, "resources", []):
        gz = raw / fname
        if gz.is_file():
            actual = calculate_md5(str(gz))
            if actual != md5:
                return BenchError(f"dataset '{ds.name}': {gz} is corrupt (MD5 {actual}, expected {md5}, "
                                  f"torchvision's); replace it with the original file")
            plain = raw / fname[:-3] if fname.endswith(".gz") else None
            if plain is not None and plain.is_file():
                try:
                    with gzip.open(gz, "rb") as g, open(plain, "rb") as f:
                        same = _same_stream(g, f)
                except (OSError, EOFError) as e:
                    return BenchError(f"dataset '{ds.name}': {gz} cannot be decompressed ({type(e).__name__}) "
                                      f"although its MD5 {md5} is right")
                if not same:
                    return BenchError(f"dataset '{ds.name}': {plain} is corrupt (it differs from {gz} decompressed, "
                                      f"whose MD5 {md5} is right); delete it and it is extracted again")
    return None


def _same_stream(a, b, chunk: int = 1 << 20) -> bool:
    while True:
        x, y = a.read(chunk), b.read(chunk)
        if x != y:
            return False
        if not x:
            return True


def load_torchvision(ds: Dataset, cls, root: Path, download: bool) -> RawData:
    folder = ds.writable_folder(root)
    try:
        with folder_lock(folder):  # torchvision extracts in place: one process at a time
            train = cls(str(folder), train=True, download=download)
            test = cls(str(folder), train=False, download=download)
    except Exception as e:  # offline download failures surface as RuntimeError/URLError
        raise (corrupt_file_error(ds, cls, folder) or ds.missing_error(root, e)) from None
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
    input_stats = ((0.1307,), (0.3081,))
    public_partner = "fashion-mnist"
    #: DataLens' README settings (AI-secure/DataLens): epsilon -> (topk, sigma, thresh beta, z_dim)
    paper_settings = {"datalens": {1.0: (200, 5000.0, 0.7, 50), 10.0: (300, 800.0, 0.2, 50)}}

    def load(self, root: Path, download: bool = True) -> RawData:
        from torchvision.datasets import MNIST as TV

        return load_torchvision(self, TV, root, download)
