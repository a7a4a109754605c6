"""Dataset loaders on tiny fixtures written here (IDX, CIFAR pickles, PNG folders) and on Debian's files."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from vit_interp.data import augment, fit_to_model, load_dataset, normalize, prepare, split_train_val
from vit_interp.data.fashion_mnist import DEBIAN_DIR, load_fashion_mnist
from vit_interp.data.idx import read_idx
from vit_interp.data.locate import DATA_ENV_VAR
from vit_interp.errors import DataError
from tests.micro import micro_config


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_fashion_mnist(folder: Path, n_train: int = 60, n_test: int = 20, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)
    return folder


def no_download(monkeypatch) -> None:
    import torchvision.datasets

    class Offline:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_an_explicit_root(tmp_path, compress) -> None:
    make_fashion_mnist(tmp_path, compress=compress)
    train = load_fashion_mnist("train", root=tmp_path)
    assert train.images.shape == (60, 1, 28, 28) and train.images.dtype == torch.float32
    assert 0 <= float(train.images.min()) and float(train.images.max()) <= 1
    assert train.labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert train.class_names[9] == "Ankle boot" and len(load_fashion_mnist("test", root=tmp_path)) == 20


def test_fashion_mnist_torchvision_layout_and_env_var(tmp_path, monkeypatch) -> None:
    make_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    assert len(load_fashion_mnist("test", root=tmp_path)) == 20
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert len(load_fashion_mnist("test")) == 20  # found through $VIT_INTERP_DATA before Debian's copy


def test_missing_data_tries_torchvision_then_says_how_to_get_it(tmp_path, monkeypatch) -> None:
    no_download(monkeypatch)
    with pytest.raises(DataError, match="download failed .*no network.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        load_fashion_mnist("train", root=tmp_path / "empty", download=False)


def test_download_fallback_is_used_when_it_works(tmp_path, monkeypatch) -> None:
    import torchvision.datasets

    class FakeDownload:  # stands in for torchvision writing the raw files
        def __init__(self, root, train=True, download=False):
            make_fashion_mnist(Path(root) / "FashionMNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeDownload)
    assert len(load_fashion_mnist("train", root=tmp_path / "fresh")) == 60


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: p.write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"\x00" * 10), "holds 10 bytes of data but its header promises 125"),
        (lambda p: p.write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 100), "bad magic number 12345678"),
        (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x03")[:10]), "corrupt or truncated"),
    ],
    ids=["truncated", "magic", "broken_gzip"],
)
def test_corrupt_idx_files(tmp_path, corrupt, match) -> None:
    path = tmp_path / "x-idx3-ubyte.gz"
    if "magic" in match or "promises" in match:
        path = tmp_path / "x-idx3-ubyte"
    corrupt(path)
    with pytest.raises(DataError, match=match):
        read_idx(path)


def test_label_image_count_mismatch(tmp_path) -> None:
    make_fashion_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(59) % 10)
    with pytest.raises(DataError, match="60 images but 59 labels"):
        load_fashion_mnist("train", root=tmp_path)


def make_cifar(root: Path, variant: str, n: int = 12) -> None:
    rng = np.random.default_rng(1)
    if variant == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        files, key, meta = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", ("batches.meta", "label_names", 10)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        files, key, meta = ["train", "test"], "fine_labels", ("meta", "fine_label_names", 100)
    for file in files:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: [i % 10 for i in range(n)]}
        (folder / file).write_bytes(pickle.dumps(batch))
    (folder / meta[0]).write_bytes(pickle.dumps({meta[1]: [f"class{i}" for i in range(meta[2])]}))


@pytest.mark.parametrize("variant, n_train, n_classes", [("cifar10", 60, 10), ("cifar100", 12, 100)])
def test_cifar_in_torchvision_layout(tmp_path, variant, n_train, n_classes) -> None:
    make_cifar(tmp_path, variant)
    train = load_dataset(variant, "train-full", root=tmp_path)
    test = load_dataset(variant, "test", root=tmp_path)
    assert train.images.shape == (n_train, 3, 32, 32) and len(test) == 12 and train.n_classes == n_classes


def test_cifar_refuses_pickles_that_are_not_cifar(tmp_path, monkeypatch) -> None:
    make_cifar(tmp_path, "cifar10")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match="builtins.print, which a CIFAR batch never contains"):
        load_dataset("cifar10", "test", root=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((3, 100), np.uint8), "labels": [0, 1, 2]}))
    with pytest.raises(DataError, match="expected \\[n, 3072\\]"):
        load_dataset("cifar10", "test", root=tmp_path)
    no_download(monkeypatch)
    with pytest.raises(DataError, match="download failed"):
        load_dataset("cifar10", "test", root=tmp_path / "none")


def make_folder(root: Path, classes=("cat", "dog"), n: int = 3, mode: str = "RGB", size=(10, 8)) -> Path:
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            colour = (40 * c + i, 100, 200) if mode == "RGB" else 40 * c + i
            Image.new(mode, size, colour).save(root / name / f"{i}.png")
    return root


def test_image_folder(tmp_path) -> None:
    data = load_dataset(f"folder:{make_folder(tmp_path / 'pets')}", "train-full")
    assert data.images.shape == (6, 3, 8, 10) and data.class_names == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    grey = load_dataset(f"folder:{make_folder(tmp_path / 'grey', mode='L')}", "train-full")
    assert grey.images.shape[1] == 1
    make_folder(tmp_path / "split" / "train")
    make_folder(tmp_path / "split" / "test", n=2)
    assert len(load_dataset(f"folder:{tmp_path / 'split'}", "test")) == 4


def test_image_folder_errors(tmp_path) -> None:
    make_folder(tmp_path / "a")
    (tmp_path / "a" / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class holds no PNG/JPEG images"):
        load_dataset(f"folder:{tmp_path / 'a'}", "train-full")
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'b'}", "train-full")
    make_folder(tmp_path / "c")
    (tmp_path / "c" / "cat" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png .*corrupt"):
        load_dataset(f"folder:{tmp_path / 'c'}", "train-full")
    make_folder(tmp_path / "d", classes=("x",))
    make_folder(tmp_path / "d2", classes=("y",), size=(5, 5))
    (tmp_path / "d" / "x" / "small.png").write_bytes((tmp_path / "d2" / "y" / "0.png").read_bytes())
    with pytest.raises(DataError, match="pass image_size="):
        load_dataset(f"folder:{tmp_path / 'd'}", "train-full")
    with pytest.raises(DataError, match="unknown dataset 'mnist3'"):
        load_dataset("mnist3")
    with pytest.raises(DataError, match="unknown split 'valid'"):
        load_dataset("fashion-mnist", "valid")


def test_split_is_stratified_deterministic_and_disjoint(tmp_path) -> None:
    make_fashion_mnist(tmp_path, n_train=200)
    full = load_fashion_mnist("train", root=tmp_path)
    train, val = split_train_val(full, 50, seed=3)
    again, _ = split_train_val(full, 50, seed=3)
    other, _ = split_train_val(full, 50, seed=4)
    assert len(train) == 150 and len(val) == 50 and val.class_counts().tolist() == [5] * 10
    assert torch.equal(train.images, again.images) and not torch.equal(train.images, other.images)
    rows = {tuple(x.flatten().tolist()[:20]) for x in train.images}
    assert not any(tuple(x.flatten().tolist()[:20]) in rows for x in val.images)


def test_transforms() -> None:
    cfg = micro_config(image_size=16, in_channels=3, image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    grey = torch.rand(4, 1, 28, 28)
    fitted = fit_to_model(grey, cfg)
    assert fitted.shape == (4, 3, 16, 16)
    torch.testing.assert_close(prepare(grey, cfg), (fitted - 0.5) / 0.25)
    assert normalize(grey, None, None) is grey
    images = torch.rand(8, 1, 28, 28)
    a = augment(images, torch.Generator().manual_seed(0))
    b = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, images) and a.shape == images.shape
    shifted = augment(images, torch.Generator().manual_seed(0), max_shift=0, flip=False)
    assert torch.equal(shifted, images)


@pytest.mark.skipif(not Path(DEBIAN_DIR).is_dir(), reason="Debian's dataset-fashion-mnist is not installed (make test installs it)")
def test_real_fashion_mnist_from_debian(monkeypatch) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    train, val, test = (load_dataset("fashion-mnist", split) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    assert test.class_counts().tolist() == [1000] * 10 and val.class_counts().tolist() == [500] * 10
    assert abs(float(test.images.mean()) - 0.2868) < 1e-3


def test_download_goes_to_the_data_env_var_never_to_a_system_folder(tmp_path, monkeypatch) -> None:
    import torchvision.datasets

    import vit_interp.data.fashion_mnist as fm

    targets = []

    class FakeDownload:
        def __init__(self, root, train=True, download=False):
            targets.append(Path(root))
            make_fashion_mnist(Path(root) / "FashionMNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeDownload)
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "not-installed"))
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))
    assert len(fm.load_fashion_mnist("test")) == 20
    assert set(targets) == {tmp_path / "env"}
