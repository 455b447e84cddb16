"""Fashion-MNIST from its IDX files (Xiao et al. 2017, https://arxiv.org/abs/1708.07747).

The files are found, in this order, in the folder named by ``NETSLIM_FASHION_MNIST``, then in
the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). Both the
gzipped (``*-ubyte.gz``) and plain (``*-ubyte``) names are accepted. Nothing is downloaded.

Example:
    >>> from netslim.data.fashion_mnist import load_fashion_mnist
    >>> train = load_fashion_mnist("train")     # 60,000 images
    >>> train.images.shape, train.images.dtype  # (60000, 1, 28, 28), float32 in [0, 1]
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from netslim.errors import DataNotFoundError

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_PREFIX = {"train": "train", "test": "t10k"}
# IDX element type codes (third byte of the magic number) -> numpy big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class ImageSplit:
    """One split: ``images`` (N, 1, 28, 28) float32 in [0, 1] and ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str

    def __len__(self) -> int:
        return len(self.labels)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) into an array of its declared shape and type.

    Raises:
        DataNotFoundError: if the file is not a valid IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataNotFoundError(f"'{path}' is not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise DataNotFoundError(f"'{path}' is truncated: header says {shape}, data has another size")
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_folder() -> Path:
    """The folder holding the IDX files.

    Raises:
        DataNotFoundError: naming the Debian package to install when no folder has the files.
    """
    env = os.environ.get("NETSLIM_FASHION_MNIST")
    candidates = ([Path(env).expanduser()] if env else []) + [DEBIAN_FOLDER]
    for folder in candidates:
        if _find(folder, "train-images-idx3-ubyte") is not None:
            return folder
    raise DataNotFoundError(
        "Fashion-MNIST not found; install it with `apt-get install dataset-fashion-mnist` or set "
        "NETSLIM_FASHION_MNIST to a folder holding the *-idx?-ubyte[.gz] files"
    )


def load_fashion_mnist(split: str = "train", limit: int | None = None) -> ImageSplit:
    """Load ``train`` (60,000) or ``test`` (10,000) images and labels, the first ``limit`` if given.

    Raises:
        DataNotFoundError: if the split is unknown or the files are missing.
    """
    if split not in _PREFIX:
        raise DataNotFoundError(f"unknown Fashion-MNIST split '{split}'; use train or test")
    folder = fashion_mnist_folder()
    images = read_idx(_find(folder, f"{_PREFIX[split]}-images-idx3-ubyte"))[:limit]
    labels = read_idx(_find(folder, f"{_PREFIX[split]}-labels-idx1-ubyte"))[:limit]
    pixels = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)  # (N, 1, 28, 28)
    return ImageSplit(pixels, torch.from_numpy(labels.astype(np.int64)), f"fashion-mnist:{split} ({folder})")


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None
