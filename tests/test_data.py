import os
import pickle

import numpy as np
import pytest
import torch

from fastadv.data import DATASETS, DatasetInfo, dataset_info, load_dataset, write_cifar_folder


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def stack(dataset):
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.stack([torch.as_tensor(label) for label in labels])


# ----------------------------------------------------------------------------- digits
def test_digits_split_sizes_shapes_and_dtypes(digits):
    train, test, info = digits
    assert (len(train), len(test)) == (1347, 450)
    assert info == dataset_info("digits")
    assert info.input_shape == (1, 8, 8) and info.num_classes == 10
    assert (info.default_eps, info.default_alpha) == (0.2, 0.05)
    image, label = train[0]
    assert image.dtype == torch.float32 and image.shape == (1, 8, 8)
    assert torch.as_tensor(label).dtype == torch.int64 and torch.as_tensor(label).dim() == 0


def test_digits_values_are_sixteenths_in_unit_range(digits):
    for dataset in digits[:2]:
        images, _ = stack(dataset)
        assert images.min() >= 0 and images.max() <= 1
        assert torch.equal(images * 16, (images * 16).round())


def test_digits_split_is_stratified(digits):
    train, test, _ = digits
    train_counts = torch.bincount(stack(train)[1], minlength=10).double()
    test_counts = torch.bincount(stack(test)[1], minlength=10).double()
    assert (train_counts > 0).all() and (test_counts > 0).all()
    # Each class is split 3:1 up to one sample of rounding.
    assert ((train_counts - 3 * test_counts).abs() <= 3).all()


def test_digits_split_is_deterministic_and_disjoint(digits):
    train, test, _ = digits
    again_train, again_test, _ = load_dataset("digits", seed=123)
    assert torch.equal(stack(train)[0], stack(again_train)[0])
    assert torch.equal(stack(test)[1], stack(again_test)[1])
    # Together the two splits are exactly scikit-learn's 1797 images.
    from sklearn.datasets import load_digits
    total = np.concatenate([stack(train)[0].flatten(1).numpy(), stack(test)[0].flatten(1).numpy()])
    assert sorted(map(bytes, total)) == sorted(map(bytes, (load_digits().data / 16).astype(np.float32)))


def test_digits_are_never_augmented(digits):
    train, _, _ = digits  # loaded with the default augment=True
    assert all(torch.equal(train[i][0], train.images[i]) for i in range(50))


def test_digits_mean_std_match_the_training_split(digits):
    images, _ = stack(digits[0])
    info = digits[2]
    assert images.mean().item() == pytest.approx(info.mean[0], abs=1e-6)
    assert images.double().std(unbiased=False).item() == pytest.approx(info.std[0], abs=1e-6)


# ----------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("name, folder, num_classes", [("cifar10", "cifar-10-batches-py", 10),
                                                       ("cifar100", "cifar-100-python", 100)])
def test_cifar_folder_loads_through_the_reader(tmp_path, name, folder, num_classes):
    written = write_cifar_folder(tmp_path, name, train_size=23, test_size=7, seed=3)
    assert written == os.path.join(str(tmp_path), folder)
    train, test, info = load_dataset(name, root=tmp_path, augment=False)
    assert (len(train), len(test)) == (23, 7)
    assert info.num_classes == num_classes and info.input_shape == (3, 32, 32)
    assert info.default_eps == pytest.approx(8 / 255) and info.default_alpha == pytest.approx(2 / 255)

    # The pixel values and labels are exactly what the pickles hold, in torchvision's layout.
    test_file = "test_batch" if name == "cifar10" else "test"
    with open(os.path.join(written, test_file), "rb") as file:
        entry = pickle.load(file, encoding="latin1")
    label_key = "labels" if name == "cifar10" else "fine_labels"
    assert entry["data"].dtype == np.uint8 and entry["data"].shape == (7, 3072)
    images, labels = stack(test)
    assert images.dtype == torch.float32 and images.shape == (7, 3, 32, 32)
    expected = torch.from_numpy(entry["data"]).reshape(7, 3, 32, 32).float() / 255
    assert torch.equal(images, expected)
    assert labels.dtype == torch.int64 and labels.tolist() == entry[label_key]
    assert all(0 <= label < num_classes for label in stack(train)[1].tolist())


def test_cifar10_training_set_spans_five_batches(tmp_path):
    folder = write_cifar_folder(tmp_path, "cifar10", train_size=20, test_size=10)
    sizes = []
    for i in range(1, 6):
        with open(os.path.join(folder, f"data_batch_{i}"), "rb") as file:
            sizes.append(len(pickle.load(file, encoding="latin1")["labels"]))
    assert sizes == [4] * 5
    train, _, _ = load_dataset("cifar10", root=tmp_path)
    assert torch.bincount(train.labels, minlength=10).tolist() == [2] * 10


def test_cifar_augmentation_changes_train_not_test(tmp_path):
    write_cifar_folder(tmp_path, "cifar10", train_size=8, test_size=8)
    train, test, _ = load_dataset("cifar10", root=tmp_path)
    plain, _, _ = load_dataset("cifar10", root=tmp_path, augment=False)
    torch.manual_seed(0)
    augmented = torch.stack([train[0][0] for _ in range(20)])
    original = plain[0][0]
    assert augmented.shape == (20, 3, 32, 32) and augmented.dtype == torch.float32
    assert augmented.min() >= 0 and augmented.max() <= 1
    assert any(not torch.equal(view, original) for view in augmented)
    # A crop and a flip move pixels, they do not invent values: each view is the original,
    # shifted by at most 4 pixels with zeros coming in, possibly mirrored.
    padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
    for view in augmented:
        candidates = [padded[:, i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
        assert any(torch.equal(view, c) or torch.equal(view, c.flip(-1)) for c in candidates)
    assert torch.equal(test[0][0], test[0][0]) and torch.equal(test[0][0], stack(test)[0][0])


def test_missing_cifar_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as error:
        load_dataset("cifar10", root=tmp_path)
    assert "--data-root" in str(error.value) and "--download" in str(error.value)
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_dataset("cifar100", root=tmp_path / "does-not-exist")
    folder = write_cifar_folder(tmp_path, "cifar100")
    os.remove(os.path.join(folder, "meta"))
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.meta"):
        load_dataset("cifar100", root=tmp_path)


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_sized():
    train, test, info = load_dataset("synthetic", synthetic_size=40, seed=7, augment=False)
    assert (len(train), len(test)) == (40, 10)
    assert info.input_shape == (3, 32, 32) and info.num_classes == 10
    images, labels = stack(train)
    assert images.dtype == torch.float32 and images.shape == (40, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < 10
    again, _, _ = load_dataset("synthetic", synthetic_size=40, seed=7, augment=False)
    other, _, _ = load_dataset("synthetic", synthetic_size=40, seed=8, augment=False)
    assert torch.equal(images, stack(again)[0]) and torch.equal(labels, stack(again)[1])
    assert not torch.equal(images, stack(other)[0])


def test_synthetic_size_is_validated():
    with pytest.raises(ValueError, match="synthetic_size"):
        load_dataset("synthetic", synthetic_size=3)


# ----------------------------------------------------------------------------- names
def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ValueError, match="digits.*cifar10.*cifar100.*synthetic"):
        load_dataset("mnist")


def test_every_dataset_has_an_info():
    for name in DATASETS:
        info = dataset_info(name)
        assert isinstance(info, DatasetInfo) and info.name == name
        assert len(info.mean) == len(info.std) == info.input_shape[0]
    assert dataset_info("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert dataset_info("cifar100").std == (0.2673, 0.2564, 0.2762)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_written_folder_is_what_torchvision_reads(tmp_path, monkeypatch, name):
    import torchvision
    dataset_class = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    # Only the md5 checks stand between torchvision and a folder of random images.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    write_cifar_folder(tmp_path, name, train_size=12, test_size=5)
    train, test, _ = load_dataset(name, root=tmp_path, augment=False)
    for train_flag, ours in ((True, train), (False, test)):
        theirs = dataset_class(str(tmp_path), train=train_flag)
        assert torch.equal(torch.from_numpy(theirs.data).permute(0, 3, 1, 2), ours.images)
        assert theirs.targets == ours.labels.tolist()
        assert theirs.classes == ours.classes


def test_loader_batches(digits):
    images, labels = next(iter(torch.utils.data.DataLoader(digits[0], batch_size=16, shuffle=True)))
    assert images.shape == (16, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (16,) and labels.dtype == torch.int64


# ----------------------------------------------------------------------------- on the device
def test_batch_crop_flip_is_a_crop_and_flip_of_each_sample():
    """Each output sample is the zero-padded input cropped at some offset in 0..8 and maybe
    flipped (torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip), and the offsets and
    flips drawn over a batch cover their ranges."""
    from fastadv.data import random_crop_flip_batch

    images = torch.rand(64, 3, 6, 5)
    out = random_crop_flip_batch(images, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    seen = set()
    for i in range(64):
        matches = [(top, left, flip) for top in range(5) for left in range(5) for flip in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, top:top + 6, left:left + 5]))]
        assert matches, f"sample {i} is no crop of its padded image"
        seen.update(matches)
    assert {t for t, _, _ in seen} == set(range(5)) and {f for _, _, f in seen} == {False, True}


def test_device_batches_are_the_loaders_batches_and_repeat_for_a_resume():
    from fastadv.data import DeviceBatches, ImageDataset

    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(20) % 10
    plain = DeviceBatches(ImageDataset(images, labels, augment=False), "cpu")
    indices = [[3, 1, 4], [15, 9, 2], [6, 5]]
    for (x, y), index in zip(plain.batches(indices, seed=1), indices):
        assert torch.equal(x, images[index].float() / 255) and torch.equal(y, labels[index])
    augmented = DeviceBatches(ImageDataset(images, labels, augment=True), "cpu")
    whole = [x for x, _ in augmented.batches(indices, seed=7)]
    resumed = [x for x, _ in augmented.batches(indices, seed=7, first=1)]
    assert all(torch.equal(a, b) for a, b in zip(whole[1:], resumed))
    assert not torch.equal(whole[0], [x for x, _ in augmented.batches(indices, seed=8)][0])
