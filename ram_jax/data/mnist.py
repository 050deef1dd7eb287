"""MNIST from the four original IDX files: reading, checksums, downloads and loading.

This module depends on numpy and the standard library only, so it works where
tensorflow-datasets is not installed (e.g. the GPU machines). The TFDS builder in
`ram_jax.data.tfds_mnist` is imported lazily, only when the "tfds" backend is used.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib
import logging
import operator
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
import zlib
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

MNIST_DIR_ENV = "RAM_JAX_MNIST_DIR"
DEFAULT_MNIST_DIR = pathlib.Path("~/.cache/ram_jax/mnist")
# Same bytes as LeCun's originals (the sha256 below are those TFDS lists for its `mnist`).
MNIST_BASE_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
DOWNLOAD_TIMEOUT_S = 60.0

MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    ),
}
MNIST_NUM_EXAMPLES: dict[str, int] = {"train": 60000, "test": 10000}
MNIST_IMAGE_SHAPE = (28, 28)
MNIST_NUM_CLASSES = 10

BACKENDS = ("auto", "tfds", "numpy")

# IDX magic = 0x0000 | type code | ndim; MNIST uses only unsigned bytes (type 0x08).
_IDX_MAGIC_NDIM = {2049: 1, 2051: 3}
_GZIP_MAGIC = b"\x1f\x8b"

_HOW_TO_PROVIDE = (
    f"To provide the data, set the environment variable {MNIST_DIR_ENV} (or the config field "
    "`data_dir`) to a folder holding the four original MNIST files "
    f"({', '.join(MNIST_SHA256)}), e.g. downloaded from {MNIST_BASE_URL}"
)


class DataFileError(Exception):
    """A data file is missing, unreadable, malformed, or fails its checksum."""


class MnistArrays(NamedTuple):
    """The MNIST train and test sets in their original order."""

    train_images: np.ndarray  # uint8[60000, 28, 28]
    train_labels: np.ndarray  # int32[60000], values 0..9
    test_images: np.ndarray  # uint8[10000, 28, 28]
    test_labels: np.ndarray  # int32[10000], values 0..9


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an unsigned-byte IDX file, gzipped or raw.

    Args:
      path: an IDX file; gzip is detected from its first bytes, not its name.

    Returns:
      uint8[count] for a label file (magic 2049) or uint8[count, rows, cols] for an
      image file (magic 2051); a fresh, writable array.

    Raises:
      DataFileError: naming the file, if it is missing, unreadable, not gzip-valid,
        has an unknown magic number, or holds more or fewer bytes than its header says.
    """
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw
    except FileNotFoundError as e:
        raise DataFileError(f"IDX file {path} does not exist.") from e
    # A truncated .gz surfaces as EOFError; a damaged one as BadGzipFile or zlib.error.
    except (OSError, EOFError, zlib.error) as e:
        raise DataFileError(f"Cannot read IDX file {path}: {e}") from e

    if len(data) < 4:
        raise DataFileError(f"IDX file {path} is too short ({len(data)} bytes) for a header.")
    magic = int.from_bytes(data[:4], "big")
    ndim = _IDX_MAGIC_NDIM.get(magic)
    if ndim is None:
        raise DataFileError(
            f"IDX file {path} has magic number {magic}; expected 2049 (labels) or 2051 (images)."
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataFileError(f"IDX file {path} is truncated inside its header.")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header_len
    if actual != expected:
        raise DataFileError(
            f"IDX file {path} has {actual} data bytes but its header (shape {shape}) "
            f"implies {expected}: the file is truncated or corrupt."
        )
    # Copy so callers get a writable array that does not pin the decompressed buffer.
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape).copy()


def resolve_mnist_dir(data_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Returns the MNIST folder: `data_dir`, else $RAM_JAX_MNIST_DIR, else ~/.cache/ram_jax/mnist.

    An empty string (argument or environment variable) counts as unset.
    """
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(MNIST_DIR_ENV) or DEFAULT_MNIST_DIR
    return pathlib.Path(data_dir).expanduser()


def _sha256(path: pathlib.Path) -> str:
    # Hashing all four files takes ~10-20 ms, so every load re-hashes rather than trusting a
    # cache marker that could go stale.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(filename: str, dest: pathlib.Path) -> None:
    """Downloads `filename` from MNIST_BASE_URL to `dest` atomically, checking its sha256."""
    url = MNIST_BASE_URL + filename
    expected = MNIST_SHA256[filename]
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Temp file in the destination folder so os.replace is an atomic rename on one filesystem;
    # readers never see a partial file, and a failed download leaves nothing behind.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest.parent)
    tmp = pathlib.Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected:
            raise DataFileError(
                f"Downloaded {url} has sha256 {digest.hexdigest()}, expected {expected}."
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def ensure_mnist_files(
    data_dir: str | os.PathLike[str] | None = None, *, download: bool = True
) -> pathlib.Path:
    """Makes sure the four MNIST .gz files are present and match their sha256.

    Args:
      data_dir: folder holding the files; see `resolve_mnist_dir` for the default.
      download: fetch missing files from MNIST_BASE_URL (needs internet).

    Returns:
      The resolved folder, holding all four verified files.

    Raises:
      DataFileError: a file is missing and cannot be downloaded, or fails its checksum.
        The message names the file path, its expected sha256 and how to provide it.
    """
    folder = resolve_mnist_dir(data_dir)
    for filename, expected in MNIST_SHA256.items():
        path = folder / filename
        if not path.is_file():
            if not download:
                raise DataFileError(
                    f"MNIST file {path} is missing (expected sha256 {expected}) and downloading "
                    f"is disabled. {_HOW_TO_PROVIDE}"
                )
            log.info("Downloading %s to %s", MNIST_BASE_URL + filename, path)
            try:
                _download(filename, path)
            except (OSError, urllib.error.URLError, DataFileError) as e:
                raise DataFileError(
                    f"MNIST file {path} is missing (expected sha256 {expected}) and could not "
                    f"be downloaded from {MNIST_BASE_URL + filename}: {e}. {_HOW_TO_PROVIDE}"
                ) from e
            continue  # _download verified the checksum while streaming.
        try:
            actual = _sha256(path)
        except OSError as e:
            raise DataFileError(
                f"Cannot read MNIST file {path} (expected sha256 {expected}): {e}. "
                f"{_HOW_TO_PROVIDE}"
            ) from e
        if actual != expected:
            raise DataFileError(
                f"MNIST file {path} is corrupt: sha256 {actual}, expected {expected}. "
                f"Delete it to re-download, or replace it with the original. {_HOW_TO_PROVIDE}"
            )
    return folder


def read_mnist_split(folder: str | os.PathLike[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split from a folder of (already verified) IDX files.

    Returns:
      (uint8[n, 28, 28] images, int32[n] labels), n = 60000 for 'train', 10000 for 'test'.

    Raises:
      DataFileError: a file does not hold what MNIST's `split` should.
    """
    folder = pathlib.Path(folder)
    images_name, labels_name = MNIST_FILES[split]
    images = read_idx(folder / images_name)
    labels = read_idx(folder / labels_name)
    n = MNIST_NUM_EXAMPLES[split]
    if images.shape != (n, *MNIST_IMAGE_SHAPE):
        raise DataFileError(
            f"{folder / images_name} holds images of shape {images.shape}, "
            f"expected {(n, *MNIST_IMAGE_SHAPE)}."
        )
    if labels.shape != (n,):
        raise DataFileError(f"{folder / labels_name} holds {labels.shape} labels, expected ({n},).")
    if labels.max() >= MNIST_NUM_CLASSES:
        raise DataFileError(f"{folder / labels_name} has a label above {MNIST_NUM_CLASSES - 1}.")
    return images, labels.astype(np.int32)


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"Unknown MNIST backend {backend!r}; expected one of {BACKENDS}.")
    if backend != "auto":
        return backend
    try:
        importlib.import_module("tensorflow_datasets")
        importlib.import_module("array_record")
    except ImportError:
        return "numpy"
    return "tfds"


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    backend: str = "auto",
    tfds_data_dir: str | os.PathLike[str] | None = None,
) -> MnistArrays:
    """Loads MNIST train and test sets in their original order.

    Args:
      data_dir: folder of the four original .gz files (see `resolve_mnist_dir`); missing
        files are downloaded there when online.
      backend: "numpy" reads the verified IDX files directly; "tfds" prepares the
        `ram_jax_mnist` TFDS dataset once (array_record) under `tfds_data_dir` and reads it
        back (`data_dir` is then needed only for that first preparation); "auto" is "tfds"
        if tensorflow_datasets and array_record import, else "numpy".
      tfds_data_dir: where TFDS keeps prepared data (default: TFDS's own default,
        $TFDS_DATA_DIR or ~/tensorflow_datasets). Ignored by the numpy backend.

    Returns:
      MnistArrays: uint8 images [60000|10000, 28, 28] and int32 labels [60000|10000].
      Both backends return byte-identical arrays.

    Raises:
      ValueError: unknown backend.
      DataFileError: a raw file is missing (and cannot be downloaded) or corrupt.
    """
    resolved = _resolve_backend(backend)
    if resolved == "tfds":
        # Lazy: tensorflow_datasets is optional and slow to import.
        from ram_jax.data import tfds_mnist

        return tfds_mnist.load_mnist_tfds(data_dir, tfds_data_dir=tfds_data_dir)
    folder = ensure_mnist_files(data_dir)
    train_images, train_labels = read_mnist_split(folder, "train")
    test_images, test_labels = read_mnist_split(folder, "test")
    return MnistArrays(train_images, train_labels, test_images, test_labels)


def split_train_validation(
    images: np.ndarray, labels: np.ndarray, validation_size: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Holds out the last `validation_size` training examples for validation.

    Args:
      images: [n, ...] array.
      labels: [n] array.
      validation_size: 0 <= validation_size < n.

    Returns:
      ((images[:n - v], labels[:n - v]), (images[n - v:], labels[n - v:])), original order;
      the parts are views of the inputs, not copies.

    Raises:
      ValueError: lengths differ, or validation_size is not an integer in [0, n).
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"images ({n}) and labels ({len(labels)}) differ in length.")
    if isinstance(validation_size, bool):
        raise ValueError(f"validation_size must be an integer, got {validation_size!r}.")
    try:
        v = operator.index(validation_size)
    except TypeError as e:
        raise ValueError(f"validation_size must be an integer, got {validation_size!r}.") from e
    if not 0 <= v < n:
        raise ValueError(f"validation_size must be in [0, {n}), got {v}.")
    cut = n - v
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])
