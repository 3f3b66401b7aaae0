"""Crafted archives: members that would escape the folder are refused and nothing is written."""

import io
import tarfile
import zipfile

import pytest

from imgrec.data.archives import extract_archive
from imgrec.errors import ImgrecError


def make_tar(path, members):
    """members: (name, kind, payload) with kind file | symlink | hardlink."""
    with tarfile.open(path, "w:gz") as bundle:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                bundle.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = payload
                bundle.addfile(info)
    return path


def make_zip(path, names):
    with zipfile.ZipFile(path, "w") as bundle:
        for name in names:
            bundle.writestr(name, b"data")
    return path


def test_a_clean_archive_extracts(tmp_path):
    archive = make_tar(tmp_path / "ok.tar.gz", [("cats/a.png", "file", b"x"), ("dogs/b.png", "file", b"y")])
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "cats" / "a.png").read_bytes() == b"x" and (out / "dogs" / "b.png").read_bytes() == b"y"
    out = extract_archive(make_zip(tmp_path / "ok.zip", ["cats/a.png"]), tmp_path / "zipped")
    assert (out / "cats" / "a.png").read_bytes() == b"data"


@pytest.mark.parametrize("members, message", [
    ([("../evil.png", "file", b"x")], "climbs out of the folder"),
    ([("cats/../../evil.png", "file", b"x")], "climbs out of the folder"),
    ([("/tmp/evil.png", "file", b"x")], "absolute path"),
    ([("cats/link", "symlink", "../../../etc/passwd")], "pointing outside the folder"),
    ([("cats/link", "symlink", "/etc/passwd")], "pointing outside the folder"),
    ([("cats/hard", "hardlink", "/etc/passwd")], "pointing outside the folder"),
])
def test_hostile_tar_members_are_refused_and_nothing_is_left(tmp_path, members, message):
    archive = make_tar(tmp_path / "evil.tar.gz", [("cats/ok.png", "file", b"x"), *members])
    with pytest.raises(ImgrecError, match=message):
        extract_archive(archive, tmp_path / "out" / "data")
    assert not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


@pytest.mark.parametrize("name, message", [("../evil.png", "climbs out"), ("/abs/evil.png", "absolute path"),
                                           ("C:/evil.png", "absolute path")])
def test_hostile_zip_members_are_refused(tmp_path, name, message):
    with pytest.raises(ImgrecError, match=message):
        extract_archive(make_zip(tmp_path / "evil.zip", ["ok/a.png", name]), tmp_path / "out")
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "out").exists()


def test_image_folder_reads_a_zipped_folder(tmp_path):
    import numpy as np
    from PIL import Image

    from imgrec.data.folders import image_folder

    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as bundle:
        for cls in ("ok", "scratch"):
            for index in range(6):
                buffer = io.BytesIO()
                Image.fromarray(np.full((10, 10, 3), 40 * index, np.uint8)).save(buffer, format="PNG")
                bundle.writestr(f"photos/{cls}/{index}.png", buffer.getvalue())
    splits = image_folder(str(tmp_path / "photos.zip"), image_size=8, extract_dir=str(tmp_path / "extracted"))
    assert splits.class_names == ["ok", "scratch"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 12
    assert (tmp_path / "extracted" / "photos" / "photos" / "ok" / "0.png").is_file()
