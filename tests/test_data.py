"""Tests for ram_jax.data: IDX reading, checksums, downloads, both MNIST backends."""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from mnist_paths import HAVE_MNIST as HAVE_REAL
from mnist_paths import MNIST_DIR as REAL_DIR
from mnist_paths import NO_MNIST, REPO_ROOT
from mnist_paths import needs_mnist as needs_real

from ram_jax.data import (
    MNIST_FILES,
    MNIST_SHA256,
    DataFileError,
    MnistArrays,
    ensure_mnist_files,
    load_mnist,
    read_idx,
    resolve_mnist_dir,
    split_train_validation,
)
from ram_jax.data import mnist as mnist_module

# Published MNIST facts, independent of this code.
TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch, tmp_path_factory):
    # No test may reach the network or depend on the caller's environment: downloads point
    # at an empty local folder unless a test says otherwise.
    dead = tmp_path_factory.mktemp("no_network")
    monkeypatch.setattr(mnist_module, "MNIST_BASE_URL", dead.as_uri() + "/")
    monkeypatch.delenv("RAM_JAX_MNIST_DIR", raising=False)


@pytest.fixture(scope="module")
def numpy_mnist() -> MnistArrays:
    if not HAVE_REAL:
        pytest.skip(NO_MNIST)
    return load_mnist(REAL_DIR, backend="numpy")


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = {1: 2049, 3: 2051}[array.ndim]
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _copy_real(dest: pathlib.Path) -> pathlib.Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in MNIST_SHA256:
        shutil.copyfile(REAL_DIR / name, dest / name)
    return dest


def _flip_byte(path: pathlib.Path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# --- read_idx ---------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_read_idx_round_trips(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 5, 4), dtype=np.uint8)
    labels = np.array([9, 0, 255], dtype=np.uint8)
    for name, array in [("images", images), ("labels", labels)]:
        data = _idx_bytes(array)
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if compress else data)
        got = read_idx(path)
        assert got.dtype == np.uint8
        assert got.shape == array.shape
        np.testing.assert_array_equal(got, array)
        assert got.flags.writeable


def test_read_idx_rejects_wrong_magic(tmp_path):
    data = bytearray(_idx_bytes(np.zeros((2, 3, 3), np.uint8)))
    data[3] = 0x04  # 2052: a 4-D header no MNIST file has.
    path = tmp_path / "bad-magic.gz"
    path.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(DataFileError, match="magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[:-1],  # one data byte short
        lambda raw: raw[:10],  # cut inside the header
        lambda raw: raw + b"\x00",  # one byte too many
        lambda raw: gzip.compress(raw)[:-12],  # gzip stream cut off
    ],
    ids=["short-data", "short-header", "extra-byte", "truncated-gzip"],
)
def test_read_idx_rejects_damaged_files(tmp_path, damage):
    raw = _idx_bytes(np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28))
    path = tmp_path / "damaged-idx3-ubyte"
    path.write_bytes(damage(raw))
    with pytest.raises(DataFileError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path):
    path = tmp_path / "absent.gz"
    with pytest.raises(DataFileError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


# --- resolve / ensure -------------------------------------------------------------------


def test_resolve_mnist_dir_order(monkeypatch, tmp_path):
    default = pathlib.Path("~/.cache/ram_jax/mnist").expanduser()
    assert resolve_mnist_dir() == default
    monkeypatch.setenv("RAM_JAX_MNIST_DIR", str(tmp_path / "env"))
    assert resolve_mnist_dir() == tmp_path / "env"
    assert resolve_mnist_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_missing_file_without_download_names_file_and_env_var(tmp_path):
    with pytest.raises(DataFileError) as info:
        ensure_mnist_files(tmp_path, download=False)
    message = str(info.value)
    first = next(iter(MNIST_SHA256))
    assert str(tmp_path / first) in message
    assert MNIST_SHA256[first] in message
    assert "RAM_JAX_MNIST_DIR" in message


def test_missing_file_that_cannot_be_downloaded(tmp_path):
    # The autouse fixture points downloads at an empty folder, so every fetch fails.
    with pytest.raises(DataFileError) as info:
        ensure_mnist_files(tmp_path / "data", download=True)
    message = str(info.value)
    assert "RAM_JAX_MNIST_DIR" in message
    assert MNIST_SHA256["train-images-idx3-ubyte.gz"] in message
    data = tmp_path / "data"
    assert not (data.exists() and any(data.iterdir())), "a failed download left files behind"


@needs_real
def test_ensure_accepts_real_files():
    assert ensure_mnist_files(REAL_DIR, download=False) == REAL_DIR


@needs_real
@pytest.mark.parametrize("name", ["t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz"])
def test_corrupt_file_is_rejected(tmp_path, name):
    folder = _copy_real(tmp_path / "mnist")
    _flip_byte(folder / name)
    with pytest.raises(DataFileError) as info:
        ensure_mnist_files(folder, download=True)
    message = str(info.value)
    assert str(folder / name) in message
    assert MNIST_SHA256[name] in message
    assert "RAM_JAX_MNIST_DIR" in message


@needs_real
def test_download_fetches_missing_files(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist_module, "MNIST_BASE_URL", REAL_DIR.resolve().as_uri() + "/")
    target = tmp_path / "fresh" / "mnist"  # does not exist yet
    assert ensure_mnist_files(target) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(MNIST_SHA256)
    for name, sha in MNIST_SHA256.items():
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == sha


@needs_real
def test_download_of_bad_bytes_leaves_nothing(monkeypatch, tmp_path):
    source = _copy_real(tmp_path / "mirror")
    _flip_byte(source / "t10k-labels-idx1-ubyte.gz")
    monkeypatch.setattr(mnist_module, "MNIST_BASE_URL", source.as_uri() + "/")
    target = tmp_path / "target"
    with pytest.raises(DataFileError) as info:
        ensure_mnist_files(target)
    assert str(target / "t10k-labels-idx1-ubyte.gz") in str(info.value)
    # The three good files landed; the bad one and its temp file did not.
    assert sorted(p.name for p in target.iterdir()) == sorted(
        set(MNIST_SHA256) - {"t10k-labels-idx1-ubyte.gz"}
    )


# --- load_mnist -------------------------------------------------------------------------


def test_numpy_backend_facts(numpy_mnist):
    m = numpy_mnist
    assert m.train_images.shape == (60000, 28, 28) and m.train_images.dtype == np.uint8
    assert m.test_images.shape == (10000, 28, 28) and m.test_images.dtype == np.uint8
    assert m.train_labels.shape == (60000,) and m.train_labels.dtype == np.int32
    assert m.test_labels.shape == (10000,) and m.test_labels.dtype == np.int32
    for labels in (m.train_labels, m.test_labels):
        assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(m.train_labels).tolist() == TRAIN_LABEL_COUNTS
    assert np.bincount(m.test_labels).tolist() == TEST_LABEL_COUNTS
    assert sum(TRAIN_LABEL_COUNTS) == 60000 and sum(TEST_LABEL_COUNTS) == 10000
    assert m.train_labels[0] == 5 and m.test_labels[0] == 7
    # Digits sit on a black background: corners are empty, strokes reach full intensity.
    assert m.train_images[:, 0, 0].max() == 0 and m.train_images.max() == 255


@needs_real
def test_tfds_backend_equals_numpy_backend(numpy_mnist, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    tfds_dir = tmp_path / "tfds"
    got = load_mnist(REAL_DIR, backend="tfds", tfds_data_dir=tfds_dir)
    assert (tfds_dir / "ram_jax_mnist").is_dir(), "TFDS did not prepare under tfds_data_dir"
    assert got._fields == numpy_mnist._fields
    for field, a, b in zip(got._fields, got, numpy_mnist, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, field
        assert a.tobytes() == b.tobytes(), field


@needs_real
def test_tfds_backend_reports_corrupt_file_with_our_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    folder = _copy_real(tmp_path / "mnist")
    _flip_byte(folder / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataFileError, match=MNIST_SHA256["train-labels-idx1-ubyte.gz"]):
        load_mnist(folder, backend="tfds", tfds_data_dir=tmp_path / "tfds")


@needs_real
def test_auto_backend_uses_numpy_without_tfds(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    tfds_dir = tmp_path / "tfds"
    got = load_mnist(REAL_DIR, backend="auto", tfds_data_dir=tfds_dir)
    assert got.train_images.shape == (60000, 28, 28)
    assert not tfds_dir.exists(), "auto used TFDS although it cannot be imported"


def test_unknown_backend_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="numpy") as info:
        load_mnist(tmp_path, backend="torch")
    assert "tfds" in str(info.value) and "auto" in str(info.value)


def test_mnist_module_imports_without_tfds():
    code = (
        "import sys; sys.modules['tensorflow_datasets'] = None\n"
        "import ram_jax.data.mnist\n"
        "assert sys.modules['tensorflow_datasets'] is None\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_mnist_files_cover_both_splits():
    assert set(MNIST_FILES) == {"train", "test"}
    assert {name for pair in MNIST_FILES.values() for name in pair} == set(MNIST_SHA256)


# --- split_train_validation -------------------------------------------------------------


def test_split_train_validation_takes_last_examples():
    images = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2)
    labels = np.arange(10, dtype=np.int32)
    (train_x, train_y), (val_x, val_y) = split_train_validation(images, labels, 3)
    np.testing.assert_array_equal(train_y, np.arange(7))
    np.testing.assert_array_equal(val_y, [7, 8, 9])
    np.testing.assert_array_equal(train_x, images[:7])
    np.testing.assert_array_equal(val_x, images[7:])

    (train_x, train_y), (val_x, val_y) = split_train_validation(images, labels, 0)
    np.testing.assert_array_equal(train_y, labels)
    assert val_x.shape == (0, 2, 2) and val_y.shape == (0,)


@pytest.mark.parametrize("size", [-1, 10, 11, 2.0, True])
def test_split_train_validation_rejects_bad_sizes(size):
    images = np.zeros((10, 2, 2), np.uint8)
    labels = np.zeros(10, np.int32)
    with pytest.raises(ValueError):
        split_train_validation(images, labels, size)


def test_split_train_validation_rejects_length_mismatch():
    with pytest.raises(ValueError, match="length"):
        split_train_validation(np.zeros((10, 2, 2)), np.zeros(9), 1)
