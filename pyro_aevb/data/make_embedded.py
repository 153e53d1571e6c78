"""Regenerate ``pyro_aevb/data/embedded/mnist_slice.npz`` and its README from the MNIST files.

Usage::

    python -m pyro_aevb.data.make_embedded --data-dir DIR [--output-dir OUT]

``DIR`` has the usual layout (``DIR/mnist/train-images-idx3-ubyte.gz`` ...); without
``--data-dir`` the normal resolution applies (``$PYRO_AEVB_DATA``, then the user cache, with
download). The ``.npz`` is written with fixed zip timestamps so that the same input gives the
same bytes (``numpy.savez_compressed`` stamps the current time); print its SHA-256 and, if it
changed, copy it into ``EMBEDDED_SHA256`` in ``pyro_aevb/data/embedded.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from .data_dir import resolve_data_dir
from .dataset import MNIST_LICENSE
from .datasets import MNIST_NUM_TRAIN, read_idx_split
from .embedded import EMBEDDED_FILE
from .layout import FILES

STRIDE = 10
TRAIN_INDICES = np.arange(0, MNIST_NUM_TRAIN, STRIDE, dtype=np.int32)  # 5000 of the paper's train
TEST_INDICES = np.arange(0, 10_000, STRIDE, dtype=np.int32)  # 1000, spread over both halves

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def build_arrays(data_dir: str | os.PathLike[str] | None, download: bool) -> dict[str, np.ndarray]:
    """The arrays of the embedded file, read (and verified) from the MNIST IDX files."""
    root = resolve_data_dir(data_dir)
    train_images, train_labels, _ = read_idx_split("mnist", "train", root, download=download)
    test_images, test_labels, _ = read_idx_split("mnist", "t10k", root, download=download)
    return {
        "train_images": train_images[TRAIN_INDICES],
        "train_labels": train_labels[TRAIN_INDICES],
        "train_indices": TRAIN_INDICES,
        "test_images": test_images[TEST_INDICES],
        "test_labels": test_labels[TEST_INDICES],
        "test_indices": TEST_INDICES,
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` readable by ``numpy.load``, byte-reproducible for equal input."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for key, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # else the header records the building OS
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return buffer.getvalue()


def readme_text(sha256: str, size: int) -> str:
    checksums = "\n".join(
        f"    {rel}  {FILES[rel].sha256}"
        for rel in (
            "mnist/train-images-idx3-ubyte",
            "mnist/train-labels-idx1-ubyte",
            "mnist/t10k-images-idx3-ubyte",
            "mnist/t10k-labels-idx1-ubyte",
        )
    )
    return f"""# Embedded MNIST slice

`{EMBEDDED_FILE}` is a small slice of the real MNIST data set shipped with pyro-aevb so that
tests, tutorials and quick experiments run without any download
(`pyro_aevb.data.load_embedded()` or `load_dataset("embedded-mnist")`).

- **Source**: MNIST, by Yann LeCun, Corinna Cortes and Christopher J.C. Burges
  (http://yann.lecun.com/exdb/mnist/).
- **Licence**: CC BY-SA 3.0, like the full data set; this slice is redistributed under the
  same licence, unmodified apart from the selection of rows.
  Attribution: {MNIST_LICENSE}.
- **Contents** (uint8 arrays, `numpy.load`):
  - `train_images` (5000, 28, 28), `train_labels` (5000,): training-file images at
    `train_indices` = 0, 10, 20, ..., 49990 (every 10th of the first 50000, i.e. all inside
    the AEVB paper's training split; none from its validation split 50000-59999);
  - `test_images` (1000, 28, 28), `test_labels` (1000,): t10k images at
    `test_indices` = 0, 10, 20, ..., 9990 (every 10th, so both the easier first half and the
    harder second half of the t10k file are represented).
- **Input files** (SHA-256 of the decompressed IDX files):

{checksums}

- **This file**: {size} bytes, SHA-256 `{sha256}` (checked by `load_embedded`).

Regenerate with

    python -m pyro_aevb.data.make_embedded --data-dir DIR

where `DIR/mnist/` holds the four MNIST IDX files (`.gz` or decompressed). The zip entries
carry fixed timestamps, so the same input gives the same bytes (with the same zlib).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Regenerate the embedded MNIST slice of pyro_aevb.data."
    )
    parser.add_argument("--data-dir", help="data directory with mnist/ (default: usual resolution)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path(__file__).with_name("embedded"),
        help="where to write the .npz and README.md (default: the package's embedded/)",
    )
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    args = parser.parse_args(argv)

    content = npz_bytes(build_arrays(args.data_dir, download=not args.no_download))
    sha256 = hashlib.sha256(content).hexdigest()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / EMBEDDED_FILE).write_bytes(content)
    (args.output_dir / "README.md").write_text(readme_text(sha256, len(content)), encoding="utf-8")
    print(f"wrote {args.output_dir / EMBEDDED_FILE}: {len(content)} bytes, sha256 {sha256}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
