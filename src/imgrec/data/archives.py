"""Safe extraction of .zip and .tar(.gz/.bz2/.xz) archives: downloaded datasets, or a folder of images a
user hands over as one file. A member that would land outside the destination is refused, not skipped."""

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from imgrec.errors import ImgrecError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_archive(path: str | Path) -> bool:
    name = Path(path).name.lower()
    return Path(path).is_file() and name.endswith(ARCHIVE_SUFFIXES)


def _check_member_name(archive: Path, name: str) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ImgrecError(f"archive {archive} holds a member with an absolute path ({name!r}); refusing to extract it")
    if ".." in pure.parts:
        raise ImgrecError(f"archive {archive} holds a member that climbs out of the folder ({name!r}); refusing to extract it")


def _check_tar_member(archive: Path, member: tarfile.TarInfo, destination: Path) -> None:
    _check_member_name(archive, member.name)
    if member.issym() or member.islnk():
        target = Path(member.linkname)
        base = destination / Path(member.name).parent if member.issym() else destination
        resolved = (base / target).resolve() if not target.is_absolute() else target.resolve()
        if target.is_absolute() or not resolved.is_relative_to(destination.resolve()):
            raise ImgrecError(
                f"archive {archive} holds a link {member.name!r} -> {member.linkname!r} pointing outside the folder; "
                "refusing to extract it"
            )
    elif not (member.isfile() or member.isdir()):
        raise ImgrecError(f"archive {archive} holds a special file {member.name!r} (device or pipe); refusing to extract it")


MARKER = ".imgrec-extracted"  # written last inside a folder imgrec extracted: its archive's sha256


def content_digest(archive: Path) -> str:
    """sha256 of the archive's bytes: two versions of an archive never share an extraction folder."""
    digest = hashlib.sha256()
    with open(archive, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_archive(archive: str | Path, destination: str | Path, digest: str | None = None) -> Path:
    """Extract into `destination`, which must not exist yet, after checking every member; returns it.

    Every member is checked before anything is written, so a hostile archive leaves nothing behind.
    Tar files also go through Python's own `filter="data"`, which refuses the same things again. The
    files land in a new temporary folder beside `destination`, renamed into place when complete: a crash
    leaves that temporary folder, never a half-filled `destination`, and nothing imgrec did not create is
    ever deleted or replaced (an existing `destination` is an error, unless imgrec extracted this very
    archive there before, which is then reused).
    """
    archive, destination = Path(archive), Path(destination)
    if not archive.is_file():
        raise ImgrecError(f"archive {archive} does not exist")
    digest = digest or content_digest(archive)  # the caller may have hashed it already
    if destination.exists():
        marker = destination / MARKER
        if marker.is_file() and marker.read_text().strip() == digest:
            return destination
        raise ImgrecError(f"cannot extract {archive} into {destination}: that folder already exists and imgrec did not "
                          "extract this archive there; choose another extract_dir or remove the folder yourself")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                for info in bundle.infolist():
                    _check_member_name(archive, info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink stored in a zip
                        raise ImgrecError(f"archive {archive} holds a link {info.filename!r}; refusing to extract it")
                bundle.extractall(partial)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                members = bundle.getmembers()
                for member in members:
                    _check_tar_member(archive, member, partial)
                bundle.extractall(partial, filter="data")
        else:
            raise ImgrecError(f"{archive} is neither a zip nor a tar archive")
        (partial / MARKER).write_text(digest + "\n")
        os.rename(partial, destination)  # all or nothing; fails rather than replace a folder made meanwhile
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as error:
        raise ImgrecError(f"could not extract {archive}: {error}") from error
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # our own temporary folder; gone already after the rename
    return destination
