"""Files the library writes through a temporary file get the mode of any new file."""

import hashlib
import os
import stat

import pytest

from pyro_aevb.data.download import download_file
from pyro_aevb.files import new_file_mode
from pyro_aevb.train.checkpoint import save_checkpoint, write_json_atomic

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_new_file_mode_is_that_of_open(tmp_path, umask_027):
    plain = tmp_path / "plain"
    plain.write_text("")
    assert new_file_mode() == _mode(plain) == 0o640


def test_run_files_and_downloads_are_not_private(tmp_path, umask_027):
    # mkstemp alone would leave 0o600
    written = [
        write_json_atomic(tmp_path / "history.json", {"a": 1}),
        save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1}),
    ]
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "data" / "file.bin"
    download_file([src.as_uri()], dest, hashlib.sha256(b"payload").hexdigest())
    for path in [*written, dest]:
        assert _mode(path) == 0o640, path
