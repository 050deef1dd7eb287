"""Data loading for ram_jax: MNIST from its original IDX files (numpy or TFDS backend)."""

from ram_jax.data.mnist import (
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

__all__ = [
    "MNIST_FILES",
    "MNIST_SHA256",
    "DataFileError",
    "MnistArrays",
    "ensure_mnist_files",
    "load_mnist",
    "read_idx",
    "resolve_mnist_dir",
    "split_train_validation",
]
