"""A small, validating reader for the IDX format of MNIST and Fashion-MNIST.

The format (http://yann.lecun.com/exdb/mnist/): a big-endian 32-bit magic number whose
third byte is the element type and fourth byte the number of dimensions, then one big-endian
32-bit size per dimension, then the elements in row-major order. Images files have magic 2051
(uint8, 3 dims), label files magic 2049 (uint8, 1 dim).
"""

from __future__ import annotations

import math
import struct

import numpy as np

__all__ = ["IMAGES_MAGIC", "LABELS_MAGIC", "read_idx", "read_idx_images", "read_idx_labels"]

# What the readers accept: bytes, or a memoryview of a verified file's content.
Buffer = bytes | bytearray | memoryview

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# IDX element-type codes (third byte of the magic) to big-endian numpy dtypes.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _corrupt(name: str, problem: str) -> ValueError:
    return ValueError(
        f"{name}: not a valid IDX file ({problem}). The file is corrupt or truncated; "
        "delete it and download it again (load_dataset(..., download=True))."
    )


def read_idx(
    data: Buffer, *, name: str = "<bytes>", expected_magic: int | None = None
) -> np.ndarray:
    """Parse the (decompressed) bytes of an IDX file.

    Parameters
    ----------
    data : bytes-like
        The whole file content, already decompressed (``bytes`` or a ``memoryview`` such as
        :func:`~pyro_aevb.data.download.fetch_verified` returns).
    name : str
        Used in error messages (typically the file path).
    expected_magic : int, optional
        If given, the magic number must equal it (2051 for images, 2049 for labels).

    Returns
    -------
    numpy.ndarray
        Array of shape ``dims`` from the header, in native byte order. It is a view of ``data``
        (read-only when ``data`` is) when the element type is a single byte (no copy).

    Raises
    ------
    ValueError
        On a bad magic number, an unknown element type, or a size that does not match the header.
    """
    if len(data) < 4:
        raise _corrupt(name, f"only {len(data)} bytes, no header")
    (magic,) = struct.unpack(">I", data[:4])
    if expected_magic is not None and magic != expected_magic:
        raise _corrupt(name, f"magic number {magic}, expected {expected_magic}")
    if magic >> 16 != 0:
        raise _corrupt(name, f"magic number {magic} does not start with two zero bytes")
    type_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if type_code not in _IDX_DTYPES:
        raise _corrupt(name, f"unknown element type 0x{type_code:02x}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise _corrupt(name, f"header announces {ndim} dims but the file has {len(data)} bytes")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected_len = header_len + math.prod(dims) * dtype.itemsize
    if len(data) != expected_len:
        raise _corrupt(
            name, f"header shape {dims} needs {expected_len} bytes, the file has {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array


def read_idx_images(
    data: Buffer, *, name: str = "<bytes>", image_shape: tuple[int, int] = (28, 28)
) -> np.ndarray:
    """Parse an IDX images file (magic 2051) of uint8 images.

    Returns
    -------
    numpy.ndarray
        uint8 array of shape (N, H, W) with ``(H, W) == image_shape``.
    """
    images = read_idx(data, name=name, expected_magic=IMAGES_MAGIC)
    if images.shape[1:] != tuple(image_shape):
        raise _corrupt(name, f"image shape {images.shape[1:]}, expected {tuple(image_shape)}")
    return images


def read_idx_labels(data: Buffer, *, name: str = "<bytes>") -> np.ndarray:
    """Parse an IDX labels file (magic 2049).

    Returns
    -------
    numpy.ndarray
        uint8 array of shape (N,).
    """
    return read_idx(data, name=name, expected_magic=LABELS_MAGIC)
