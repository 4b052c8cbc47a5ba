"""The datasets fastadv trains on: scikit-learn's 8x8 digits (embedded), CIFAR-10/100 and a
synthetic set for benchmarks.

Every dataset yields ``(image, label)``: a float32 image in [0, 1] of shape
``DatasetInfo.input_shape`` and an int64 scalar label. Images stay in [0, 1] because the
attacks' epsilon-balls and clipping are defined there; normalisation by ``DatasetInfo.mean`` /
``DatasetInfo.std`` happens inside the model (:class:`fastadv.models.NormalizedModel`).

CIFAR is read from torchvision's folder format with a small reader of our own rather than
``torchvision.datasets.CIFAR10``: torchvision verifies the md5 of every file, which rejects the
tiny folders that :func:`write_cifar_folder` writes for tests and smoke runs.
"""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from numbers import Integral
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_ROOT = "data"
CIFAR_PADDING = 4  # random crop after 4 zero pixels on every side, as in Madry et al. / TRADES

__all__ = ["DATASETS", "Dataset", "DatasetInfo", "ImageDataset", "dataset_info", "load_dataset",
           "write_cifar_folder"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and an attack need to know about a dataset.

    ``mean``/``std`` are per channel and feed the normalisation inside the model;
    ``default_eps``/``default_alpha`` are the L-inf radius and PGD step on the [0, 1] scale.
    """
    name: str
    num_classes: int
    input_shape: Tuple[int, int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    default_eps: float
    default_alpha: float


# Folder and file names exactly as torchvision writes them.
_CIFAR_LAYOUT = {
    "cifar10": dict(folder="cifar-10-batches-py",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", label_key="labels", names_key="label_names"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     label_key="fine_labels", names_key="fine_label_names"),
}


def _dataset_name(name) -> str:
    if not isinstance(name, str) or name.lower() not in DATASETS:
        raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {name!r}")
    return name.lower()


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset without loading it (e.g. to rebuild a model from a
    checkpoint)."""
    return DATASETS[_dataset_name(name)].info


# ----------------------------------------------------------------------------- datasets
def _random_crop_flip(image: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop to the image's own size after zero padding, then a horizontal flip with
    probability 1/2 (torchvision's RandomCrop(size, padding) + RandomHorizontalFlip()).

    Draws from torch's global generator, so DataLoader workers, which torch seeds one by one,
    get different crops."""
    height, width = image.shape[-2:]
    padded = F.pad(image, (padding, padding, padding, padding))
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    image = padded[..., top:top + height, left:left + width]
    if torch.rand(()) < 0.5:
        image = image.flip(-1)
    return image.contiguous()


class ImageDataset(torch.utils.data.Dataset):
    """Images and labels held in memory; augmentation, if any, in ``__getitem__``.

    ``images``: [N, C, H, W], uint8 (0..255, scaled by 1/255 on access) or float32 in [0, 1];
    ``labels``: int64 [N]. Both stay accessible for loaders that move a whole set to a device.
    ``augment`` turns on CIFAR's random crop (padding 4) and horizontal flip.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool = False,
                 classes: Optional[Sequence[str]] = None):
        if images.dim() != 4:
            raise ValueError(f"ImageDataset: images must have shape [N, C, H, W], got {list(images.shape)}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise TypeError(f"ImageDataset: images must be uint8 or float32, got {images.dtype}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"ImageDataset: labels must have shape [N] = [{images.shape[0]}], "
                             f"got {list(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.augment = bool(augment)
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        image = self.images[index]
        image = image.float().div_(255) if image.dtype == torch.uint8 else image.clone()
        if self.augment:
            image = _random_crop_flip(image, CIFAR_PADDING)
        return image, self.labels[index]


def random_crop_flip_batch(images: torch.Tensor, padding: int, generator: Optional[torch.Generator] = None
                           ) -> torch.Tensor:
    """:func:`_random_crop_flip` for a whole batch [B, C, H, W] on its own device: each sample its
    own crop offsets (uniform in 0..2·padding) and flip (probability 1/2), drawn from
    ``generator`` (on the batch's device), in a few batched ops with no read back to the host."""
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), device=device, generator=generator)
    flip = torch.rand(batch, device=device, generator=generator) < 0.5
    columns = torch.arange(width, device=device)
    columns = torch.where(flip[:, None], width - 1 - columns, columns) + offsets[1][:, None]
    rows = torch.arange(height, device=device) + offsets[0][:, None]
    samples = torch.arange(batch, device=device)[:, None, None, None]
    planes = torch.arange(channels, device=device)[None, :, None, None]
    return padded[samples, planes, rows[:, None, :, None], columns[:, None, None, :]]


class DeviceBatches:
    """The training split held on ``device`` (uint8 stays uint8 until a batch is drawn), batches
    gathered by index and augmented there (:func:`random_crop_flip_batch`, for a dataset with
    ``augment``): no worker processes and no host-to-device copy of images per batch, only of
    the batch's indices. Batch ``b`` of a call draws its crops from a generator seeded with
    ``seed`` and ``b``, so a run resumed mid-epoch draws the batches it would have drawn."""

    def __init__(self, dataset: "ImageDataset", device):
        self.device = torch.device(device)
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.augment = dataset.augment
        self.padding = CIFAR_PADDING

    def batches(self, indices, seed: int, first: int = 0):
        """(x, y) for each list of indices in ``indices[first:]``; x float32 in [0, 1]."""
        generator = torch.Generator(device=self.device)
        for number in range(first, len(indices)):
            index = torch.as_tensor(indices[number], dtype=torch.int64).to(self.device, non_blocking=True)
            x = self.images[index]
            x = x.float().div_(255) if x.dtype == torch.uint8 else x
            if self.augment:
                generator.manual_seed(seed * 1_000_003 + number)
                x = random_crop_flip_batch(x, self.padding, generator)
            yield x, self.labels[index]


# ----------------------------------------------------------------------------- digits
def _load_digits() -> Tuple[ImageDataset, ImageDataset]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # The split is fixed (random_state=0), not drawn from the seed: results on the embedded
    # default stay comparable from run to run and from paper table to paper table.
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, stratify=digits.target, random_state=0)

    def as_dataset(x, y):
        images = torch.from_numpy(x / 16.0).to(torch.float32).reshape(-1, 1, 8, 8)  # exact: 0..16
        return ImageDataset(images, torch.from_numpy(y), classes=[str(d) for d in range(10)])

    return as_dataset(x_train, y_train), as_dataset(x_test, y_test)


# ----------------------------------------------------------------------------- CIFAR
def _missing(path: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found: {path!r}. Point --data-root at the folder that contains it "
        f"(torchvision's layout), or pass --download to fetch it there.")


def _unpickle(path: str) -> dict:
    # The CIFAR files are Python 2 pickles of numpy arrays; latin1 is what decodes them.
    with open(path, "rb") as file:
        try:
            return pickle.load(file, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError) as error:
            raise ValueError(f"{path} is not a readable CIFAR batch ({type(error).__name__}: {error}); "
                             "replace it, e.g. with --download") from None


def _read_cifar_split(folder: str, files: Sequence[str], label_key: str):
    images, labels = [], []
    for file in files:
        entry = _unpickle(os.path.join(folder, file))
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[label_key])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)


def _load_cifar(name: str, root: str, download: bool, augment: bool):
    layout = _CIFAR_LAYOUT[name]
    if download:
        import torchvision
        dataset_class = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        dataset_class(root, train=True, download=True)
    if not os.path.isdir(root):
        raise _missing(root, "Data root")
    folder = os.path.join(root, layout["folder"])
    if not os.path.isdir(folder):
        raise _missing(folder, f"{name} folder")
    for file in layout["train"] + layout["test"] + [layout["meta"]]:
        if not os.path.isfile(os.path.join(folder, file)):
            raise _missing(os.path.join(folder, file), f"{name} file")

    classes = _unpickle(os.path.join(folder, layout["meta"]))[layout["names_key"]]
    train = ImageDataset(*_read_cifar_split(folder, layout["train"], layout["label_key"]),
                         augment=augment, classes=classes)
    test = ImageDataset(*_read_cifar_split(folder, layout["test"], layout["label_key"]),
                        classes=classes)
    return train, test


def write_cifar_folder(root: Union[str, os.PathLike], name: str = "cifar10", train_size: int = 64,
                       test_size: int = 32, seed: int = 0) -> str:
    """Write a tiny CIFAR-10/100 folder of random images in torchvision's exact format (same
    folder and file names, pickled dicts with the same keys, uint8 data [N, 3072] in CHW order).

    For tests and smoke runs: ``load_dataset(name, root=root)`` reads it like the real one.
    Labels are a seeded permutation of ``0, 1, ..., num_classes-1, 0, 1, ...``, so every class
    appears once the split is large enough. Returns the folder written.
    """
    if name not in _CIFAR_LAYOUT:
        raise ValueError(f"write_cifar_folder: name must be one of {tuple(_CIFAR_LAYOUT)}, got {name!r}")
    for argument, value in (("train_size", train_size), ("test_size", test_size)):
        if not isinstance(value, Integral) or value < 1:
            raise ValueError(f"write_cifar_folder: {argument} must be a positive integer, got {value!r}")
    layout = _CIFAR_LAYOUT[name]
    num_classes = DATASETS[name].info.num_classes
    folder = os.path.join(os.fspath(root), layout["folder"])
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)

    def dump(file: str, entry: dict) -> None:
        with open(os.path.join(folder, file), "wb") as handle:
            pickle.dump(entry, handle, protocol=2)

    def write_split(files: Sequence[str], size: int, split: str) -> None:
        data = rng.integers(0, 256, size=(size, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.permutation(np.arange(size) % num_classes)
        # The real training set of CIFAR-10 is five batches; spread the images over all of them.
        for file, rows in zip(files, np.array_split(np.arange(size), len(files))):
            entry = {"batch_label": f"{split} batch {file}", "data": data[rows],
                     "filenames": [f"{split}_{i:05d}.png" for i in rows]}
            if name == "cifar10":
                entry["labels"] = [int(label) for label in labels[rows]]
            else:
                entry["fine_labels"] = [int(label) for label in labels[rows]]
                entry["coarse_labels"] = [int(label) % 20 for label in labels[rows]]
            dump(file, entry)

    write_split(layout["train"], train_size, "training")
    write_split(layout["test"], test_size, "testing")
    if name == "cifar10":
        dump(layout["meta"], {"num_cases_per_batch": -(-train_size // 5),
                              "label_names": [f"class_{i}" for i in range(10)], "num_vis": 3072})
    else:
        dump(layout["meta"], {"fine_label_names": [f"class_{i}" for i in range(100)],
                              "coarse_label_names": [f"superclass_{i}" for i in range(20)]})
    return folder


# ----------------------------------------------------------------------------- synthetic
def _load_synthetic(size, seed, augment: bool):
    if not isinstance(size, Integral) or isinstance(size, bool) or size < 4:
        raise ValueError(f"synthetic_size must be an integer >= 4 (the test set has "
                         f"synthetic_size // 4 samples), got {size!r}")
    info = DATASETS["synthetic"].info
    generator = torch.Generator().manual_seed(int(seed))

    def make(count: int, augment: bool) -> ImageDataset:
        # uint8 like CIFAR, so a benchmark pays CIFAR's per-sample conversion and augmentation.
        images = torch.randint(0, 256, (count, *info.input_shape), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, info.num_classes, (count,), generator=generator)
        return ImageDataset(images, labels, augment=augment)

    return make(int(size), augment), make(int(size) // 4, False)


# ----------------------------------------------------------------------------- the datasets
@dataclass(frozen=True)
class Dataset:
    """A dataset, declared once in :data:`DATASETS`: ``info`` (shape, classes, normalisation,
    default ε and α), ``load(root, download, augment, synthetic_size, seed) -> (train, test)``,
    ``default_model`` (the name in :data:`fastadv.models.MODELS` trained when none is given),
    ``training`` (the trainer's defaults for what :class:`~fastadv.config.TrainConfig` leaves
    None) and ``learnable`` (False for data that carries no signal: claims are not judged on it)."""
    info: DatasetInfo
    load: Callable
    default_model: str
    training: dict
    learnable: bool = True


def _cifar(name):
    return lambda root, download, augment, synthetic_size, seed: _load_cifar(
        name, os.fspath(root) if root is not None else DEFAULT_ROOT, download, augment)


# Training defaults: digits chosen so that TRADES trains in about a minute on 2 CPU cores; CIFAR
# the TRADES paper's (100 epochs, lr 0.1 decayed by 10 at epochs 75 and 90, weight decay 2e-4,
# batch 128).
_CIFAR_TRAINING = dict(epochs=100, batch_size=128, lr=0.1, weight_decay=2e-4)
DATASETS: Dict[str, Dataset] = {
    # Digits: mean and std of every pixel of the fixed training split (1347 images, values/16,
    # population std), computed once with numpy from load_digits() and train_test_split(
    # test_size=0.25, stratify=y, random_state=0); tests/test_data.py recomputes them.
    # eps=0.2 is where standard training collapses on this data set (16 grey levels).
    "digits": Dataset(DatasetInfo("digits", 10, (1, 8, 8), (0.30522472,), (0.37600560,), 0.2, 0.05),
                      lambda root, download, augment, synthetic_size, seed: _load_digits(),
                      "digits_cnn", dict(epochs=30, batch_size=128, lr=0.05, weight_decay=5e-4)),
    "cifar10": Dataset(DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465),
                                   (0.2471, 0.2435, 0.2616), 8 / 255, 2 / 255),
                       _cifar("cifar10"), "preact_resnet18", _CIFAR_TRAINING),
    "cifar100": Dataset(DatasetInfo("cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409),
                                    (0.2673, 0.2564, 0.2762), 8 / 255, 2 / 255),
                        _cifar("cifar100"), "preact_resnet18", _CIFAR_TRAINING),
    # Uniform noise on [0, 1]: mean 1/2, std 1/sqrt(12).
    "synthetic": Dataset(DatasetInfo("synthetic", 10, (3, 32, 32), (0.5,) * 3, (1 / math.sqrt(12),) * 3,
                                     8 / 255, 2 / 255),
                         lambda root, download, augment, synthetic_size, seed: _load_synthetic(
                             synthetic_size, seed, augment),
                         "preact_resnet18", dict(epochs=2, batch_size=32, lr=0.1, weight_decay=5e-4),
                         learnable=False),
}


# ----------------------------------------------------------------------------- entry point
def load_dataset(name: str, root: Optional[Union[str, os.PathLike]] = None, download: bool = False,
                 augment: bool = True, synthetic_size: int = 1024, seed: int = 0):
    """Load a dataset: ``(train_dataset, test_dataset, info)``.

    - ``digits``: scikit-learn's ``load_digits()`` (1797 8x8 greyscale digits, 0..16 scaled to
      [0, 1]), shape (1, 8, 8), a fixed stratified split of 1347 training / 450 test images
      (``train_test_split(test_size=0.25, stratify=y, random_state=0)``); never augmented.
    - ``cifar10`` / ``cifar100``: torchvision's folder format under ``root`` (default
      ``"data"``): ``cifar-10-batches-py/`` or ``cifar-100-python/``; CIFAR-100 uses the 100 fine
      labels. ``download=True`` fetches it there with torchvision first. With ``augment`` the
      training set is randomly cropped (32, padding 4) and flipped horizontally; the test set
      never is.
    - ``synthetic``: uniform random images (3, 32, 32) and uniform labels over 10 classes,
      ``synthetic_size`` training and ``synthetic_size // 4`` test samples drawn from ``seed``,
      augmented like CIFAR-10. It carries no signal: it exists to time the pipeline, not to
      learn anything.

    ``seed`` only affects ``synthetic``; the data sets' own splits are fixed.
    """
    dataset = DATASETS[_dataset_name(name)]
    train, test = dataset.load(root, download, augment, synthetic_size, seed)
    return train, test, dataset.info
