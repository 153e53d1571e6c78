"""Data sets of the AEVB paper (MNIST, Frey Face) and Fashion-MNIST, verified and preprocessed.

>>> from pyro_aevb.data import load_dataset
>>> ds = load_dataset("embedded-mnist")  # ships with the package, no download
>>> ds.train.shape, ds.likelihood
(torch.Size([5000, 784]), 'bernoulli')
>>> load_dataset("embedded-mnist", flatten=False).train.shape  # for convolutional models
torch.Size([5000, 1, 28, 28])

Full data sets are read from ``data_dir``, else ``$PYRO_AEVB_DATA``, else the user cache
(``~/.cache/pyro-aevb``), where they are downloaded on first use; see :func:`load_dataset`.
Every read checks the file's size and SHA-256 (:mod:`~pyro_aevb.data.verify`).
"""

from .data_dir import data_dir_from_env
from .dataset import Dataset
from .datasets import DATASET_NAMES, load_dataset
from .embedded import load_embedded

__all__ = ["DATASET_NAMES", "Dataset", "data_dir_from_env", "load_dataset", "load_embedded"]
