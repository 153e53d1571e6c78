"""What the data files are: their place in the data directory, size, SHA-256 and mirrors.

Inside a data directory the layout is::

    mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    frey-face/frey_rawface.mat

IDX files may be stored gzipped or decompressed. Their size and SHA-256 are those of the
decompressed bytes, because the bytes of a ``.gz`` file depend on the compressor (the copies in
the project's shared folder are re-gzipped); the Frey Face ``.mat`` file is checked as is. The
sizes are fixed by the formats (an IDX images file is a 16-byte header and N * 28 * 28 pixels), so
a reader can stop as soon as a file holds more than it should (a decompression bomb).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FILES", "MIRRORS", "RemoteFile", "layout_help", "local_candidates"]


@dataclass(frozen=True)
class RemoteFile:
    """One data file of the layout.

    Attributes
    ----------
    relpath : str
        Path inside the data directory of the verified content, e.g.
        ``"mnist/train-images-idx3-ubyte"`` (without ``.gz``).
    sha256 : str
        SHA-256 of the decompressed content (IDX) or of the file itself (``.mat``).
    gzipped : bool
        Whether the mirrors serve the file as ``relpath + ".gz"`` (it may then be stored
        either way locally).
    size : int
        Size in bytes of the content ``sha256`` is computed on.
    """

    relpath: str
    sha256: str
    gzipped: bool
    size: int

    @property
    def folder(self) -> str:
        return self.relpath.split("/", 1)[0]

    @property
    def remote_name(self) -> str:
        """File name on the mirrors and name under which a download is stored."""
        name = self.relpath.rsplit("/", 1)[-1]
        return name + ".gz" if self.gzipped else name

    @property
    def content(self) -> str:
        """What the size and checksum are of, for messages."""
        return "decompressed content" if self.gzipped else "file"

    def urls(self) -> list[str]:
        """The URLs of this file on the current :data:`MIRRORS`, in the order to try them."""
        return [base + self.remote_name for base in MIRRORS[self.folder]]


def _idx(relpath: str, sha256: str, num: int, item_shape: tuple[int, ...]) -> RemoteFile:
    # An IDX file is a 4-byte magic number, one 4-byte size per dimension, then uint8 items.
    header = 4 + 4 * (1 + len(item_shape))
    return RemoteFile(relpath, sha256, gzipped=True, size=header + num * math.prod(item_shape))


_IMAGE = (28, 28)
_LABEL = ()

FILES: dict[str, RemoteFile] = {
    spec.relpath: spec
    for spec in (
        _idx(
            "mnist/train-images-idx3-ubyte",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            60_000,
            _IMAGE,
        ),
        _idx(
            "mnist/train-labels-idx1-ubyte",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            60_000,
            _LABEL,
        ),
        _idx(
            "mnist/t10k-images-idx3-ubyte",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            10_000,
            _IMAGE,
        ),
        _idx(
            "mnist/t10k-labels-idx1-ubyte",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            10_000,
            _LABEL,
        ),
        _idx(
            "fashion-mnist/train-images-idx3-ubyte",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            60_000,
            _IMAGE,
        ),
        _idx(
            "fashion-mnist/train-labels-idx1-ubyte",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            60_000,
            _LABEL,
        ),
        _idx(
            "fashion-mnist/t10k-images-idx3-ubyte",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            10_000,
            _IMAGE,
        ),
        _idx(
            "fashion-mnist/t10k-labels-idx1-ubyte",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            10_000,
            _LABEL,
        ),
        RemoteFile(
            "frey-face/frey_rawface.mat",
            "265a83a23adb081755cd3de375509828e690324d1d60f076b8ecebc840d59c64",
            gzipped=False,
            size=1_100_584,
        ),
    )
}

# Base URLs per folder, tried in order. Module-level so that tests (and users behind a proxy
# mirror) can replace them; any scheme urllib handles works, file:// included.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "frey-face": ("https://cs.nyu.edu/~roweis/data/",),
}


def layout_help(folder: str) -> str:
    """The expected files of one folder, one ``<data_dir>/...`` line each, for messages."""
    return "\n".join(
        f"  <data_dir>/{spec.relpath}{'[.gz]' if spec.gzipped else ''}"
        for spec in FILES.values()
        if spec.folder == folder
    )


def local_candidates(root: Path, spec: RemoteFile) -> list[Path]:
    """Where a copy of ``spec`` may be stored under ``root``, in the order to look."""
    plain = root / spec.relpath
    # Decompressed first: it is faster to read when a user has both.
    return [plain, plain.with_name(plain.name + ".gz")] if spec.gzipped else [plain]
