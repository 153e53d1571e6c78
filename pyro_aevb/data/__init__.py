"""Data sets of the AEVB paper (MNIST, Frey Face) and Fashion-MNIST, verified and preprocessed.

>>> from pyro_aevb.data import load_dataset
>>> ds = load_dataset("embedded-mnist")  # ships with the package, no download
>>> ds.train.shape, ds.likelihood
(torch.Size([5000, 784]), 'bernoulli')

Full data sets are read from ``data_dir``, else ``$PYRO_AEVB_DATA``, else the user cache
(``~/.cache/pyro-aevb``), where they are downloaded on first use; see :func:`load_dataset`.
"""

from .dataset import Dataset
from .datasets import DATASET_NAMES, load_dataset
from .download import data_dir_from_env
from .embedded import load_embedded

__all__ = ["DATASET_NAMES", "Dataset", "data_dir_from_env", "load_dataset", "load_embedded"]
