"""MNIST as a TFDS dataset (`ram_jax_mnist`) that needs no TensorFlow.

Imported lazily by `ram_jax.data.mnist.load_mnist(backend="tfds")`. TFDS runs without
TensorFlow only on a narrow path, which this builder keeps to: the array_record file
format, `tfds.features.Tensor` rather than `Image` (whose encoder needs TF), the raw .gz
files read with gzip + numpy (TFDS extraction needs TF), and reading back through
`as_data_source` (`tfds.load` / `as_dataset` need TF).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from ram_jax.data import mnist

_FILE_FORMAT = "array_record"
# Records fetched per data-source call: big enough to amortise per-call overhead,
# small enough to keep the list of decoded dicts modest.
_READ_BATCH = 10000


class RamJaxMnist(tfds.core.GeneratorBasedBuilder):
    """MNIST from the four original IDX files, in the original order (no shuffling)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Original MNIST order; uint8 [28, 28] tensors, int labels."
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the four original MNIST .gz files (from "
        f"{mnist.MNIST_BASE_URL}) in a folder and pass it as the manual dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="MNIST handwritten digits, original train/test order, from IDX files.",
            features=tfds.features.FeaturesDict(
                {
                    # Tensor, not Image: Image's numpy encoder needs TensorFlow.
                    "image": tfds.features.Tensor(shape=mnist.MNIST_IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=mnist.MNIST_NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://yann.lecun.com/exdb/mnist/",
            # Train/validation splits take the last training examples, so order must be kept.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        # Our own check (rather than TFDS's checksums.tsv) so a corrupt file gives the same
        # DataFileError, with the same instructions, as the numpy backend. ~10 ms, so it is
        # harmless that load_mnist_tfds has already run it.
        folder = mnist.ensure_mnist_files(dl_manager.manual_dir)
        return {split: self._generate_examples(folder, split) for split in mnist.MNIST_FILES}

    def _generate_examples(self, folder: pathlib.Path, split: str):
        images, labels = mnist.read_mnist_split(folder, split)
        # TFDS serialises one example per yield; there is no batched writer to use instead.
        for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
            yield i, {"image": image, "label": label}


class _DropMissingDatasetInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Variant folder %s has no")


@contextlib.contextmanager
def _quiet_missing_dataset_info():
    """Hides TFDS's warning that a not-yet-prepared dataset has no dataset_info.json.

    It is logged every time the dataset is looked up before its first preparation and
    reads like an error, though it only means "not prepared yet".
    """
    absl_logger = logging.getLogger("absl")
    drop = _DropMissingDatasetInfo()
    absl_logger.addFilter(drop)
    try:
        yield
    finally:
        absl_logger.removeFilter(drop)


def _read_split(builder: RamJaxMnist, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a prepared split back as (uint8[n, 28, 28], int32[n])."""
    source = builder.as_data_source(split)
    n = len(source)
    images = np.empty((n, *mnist.MNIST_IMAGE_SHAPE), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int32)
    # __getitems__ fetches a batch from array_record in one (threaded) call, ~1.8x faster than
    # indexing record by record; what remains is TFDS's per-record decoding (~30 us each).
    for start in range(0, n, _READ_BATCH):
        stop = min(start + _READ_BATCH, n)
        records = source.__getitems__(range(start, stop))
        images[start:stop] = np.stack([r["image"] for r in records])
        labels[start:stop] = [r["label"] for r in records]
    return images, labels


def load_mnist_tfds(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    tfds_data_dir: str | os.PathLike[str] | None = None,
) -> mnist.MnistArrays:
    """Prepares `ram_jax_mnist` once under `tfds_data_dir`, then reads it back.

    Args:
      data_dir: folder of the four original .gz files (see `mnist.resolve_mnist_dir`);
        used only when the dataset is not prepared yet.
      tfds_data_dir: TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).

    Returns:
      MnistArrays, byte-identical to `mnist.load_mnist(backend="numpy")`.
    """
    with _quiet_missing_dataset_info():
        builder = RamJaxMnist(
            data_dir=None if tfds_data_dir is None else os.fspath(tfds_data_dir),
            file_format=_FILE_FORMAT,
        )
        prepared = builder.is_prepared()
    if not prepared:
        # Verify (or download) before TFDS starts: TFDS rejects a missing or empty manual dir
        # with its own AssertionError before our builder code could explain what to do.
        folder = mnist.ensure_mnist_files(data_dir)
        builder.download_and_prepare(
            file_format=_FILE_FORMAT,
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(folder)),
        )
    train_images, train_labels = _read_split(builder, "train")
    test_images, test_labels = _read_split(builder, "test")
    return mnist.MnistArrays(train_images, train_labels, test_images, test_labels)
