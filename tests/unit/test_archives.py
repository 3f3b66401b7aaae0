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
    from imgrec.data.archives import content_digest

    folder = tmp_path / "extracted" / f"photos.zip-{content_digest(tmp_path / 'photos.zip')[:16]}"
    assert (folder / "photos" / "ok" / "0.png").is_file()


def zipped_classes(path, classes):
    """A zip of a folder of PNG class folders, two images each."""
    import numpy as np
    from PIL import Image

    with zipfile.ZipFile(path, "w") as bundle:
        for cls in classes:
            for index in range(6):
                buffer = io.BytesIO()
                Image.fromarray(np.full((10, 10, 3), 40 * index, np.uint8)).save(buffer, format="PNG")
                bundle.writestr(f"data/{cls}/{index}.png", buffer.getvalue())
    return path


def test_a_new_version_of_an_archive_is_extracted_apart_and_nothing_else_is_deleted(tmp_path):
    """cats.v2.zip after cats.v1.zip used to be read from v1's folder (named up to the first dot), and
    an extraction replaced any folder of that name, a user's own included."""
    from imgrec.data.folders import image_folder

    extract_dir = tmp_path / "userdata"
    (extract_dir / "cats").mkdir(parents=True)
    (extract_dir / "cats" / "notes.txt").write_text("mine")
    v1 = image_folder(str(zipped_classes(tmp_path / "cats.v1.zip", ["a", "b"])), image_size=8, extract_dir=str(extract_dir))
    v2 = image_folder(str(zipped_classes(tmp_path / "cats.v2.zip", ["a", "b", "c"])), image_size=8,
                      extract_dir=str(extract_dir))
    assert v1.class_names == ["a", "b"] and v2.class_names == ["a", "b", "c"]
    assert (extract_dir / "cats" / "notes.txt").read_text() == "mine"
    assert sorted(p.name.split("-")[0] for p in extract_dir.iterdir()) == ["cats", "cats.v1.zip", "cats.v2.zip"]
    again = image_folder(str(tmp_path / "cats.v2.zip"), image_size=8, extract_dir=str(extract_dir))  # reused
    assert again.class_names == v2.class_names and len(list(extract_dir.iterdir())) == 3


def test_extracting_into_a_folder_imgrec_did_not_make_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ImgrecError, match="that folder already exists and imgrec did not extract this archive there"):
        extract_archive(zipped_classes(tmp_path / "x.zip", ["a", "b"]), tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left behind
