"""The downloads imgrec makes when asked (dataset.download=true; model.weights naming torchvision weights that are
not cached): each file is checked against its published checksum and lands whole or not at all, and a failure is
one line that says why and what to copy where by hand. IMGREC_OFFLINE=1 forbids them all, for compute nodes that
must not reach the network."""

import fcntl
import http.client
import logging
import os
import re
import urllib.error
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")
OFFLINE_VARIABLE = "IMGREC_OFFLINE"
# what a transfer raises when the network, not the disk, fails (HTTPError and URLError are OSErrors too)
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def one_line(message: str) -> str:
    return re.sub(r"\s*[\r\n]+\s*", " ", message).strip()


def downloads_forbidden() -> bool:
    return os.environ.get(OFFLINE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def refuse_if_offline(subject: str, url: str, fix: str) -> None:
    if downloads_forbidden():
        raise ImgrecError(one_line(f"{subject}: needs {url}, but {OFFLINE_VARIABLE}={os.environ[OFFLINE_VARIABLE]} "
                                   f"forbids downloads. {fix}"))


def download_failed(subject: str, url: str, error: BaseException, fix: str) -> ImgrecError:
    """Why a transfer failed, in one line: an unreachable host (offline), a server's refusal, or a cut-off transfer."""
    host = urlsplit(url).hostname or url
    if isinstance(error, urllib.error.HTTPError):
        why = f"{host} answered HTTP {error.code} {error.reason}"
    elif isinstance(error, urllib.error.URLError):
        why = f"{host} cannot be reached ({error.reason}); this machine appears to be offline"
    else:
        why = f"the transfer from {host} broke off ({type(error).__name__}: {error})"
    return ImgrecError(one_line(f"{subject}: could not download {url}: {why}. {fix}"))


@contextmanager
def download_lock(folder: Path, subject: str):
    """One process at a time fetches into `folder`: torchrun's ranks, or two runs sharing a data folder, would
    otherwise write the same files at once. The next one in finds the files whole and fetches nothing."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / ".imgrec-download.lock", "a")
    except OSError as error:
        raise ImgrecError(f"{subject}: cannot download into {folder} ({error.strerror or error}); set dataset.root to "
                          "a folder you can write") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"{subject}: waiting for another process that is downloading into {folder}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # the lock goes with the closed file


def fetch_with_md5(urls: list[str], path: Path, md5: str, subject: str, fix: str) -> None:
    """`path` from the first of `urls` (mirrors) that serves it, with torchvision's downloader, which checks the MD5
    torchvision publishes. The transfer goes to <name>.part, renamed when whole: a broken or corrupt download never
    sits where a later run would take it for the data."""
    from torchvision.datasets.utils import check_integrity, download_url

    if check_integrity(str(path), md5):
        return
    refuse_if_offline(subject, urls[0], fix)
    partial = path.with_name(path.name + ".part")
    errors = []
    for url in urls:
        log.info(f"{subject}: downloading {url} into {path.parent}")
        try:
            download_url(url, str(path.parent), partial.name, md5)
        except RuntimeError:  # torchvision's "File not found or corrupted.": the file arrived with another MD5
            partial.unlink(missing_ok=True)
            errors.append(ImgrecError(one_line(f"{subject}: the download of {url} is corrupt (its MD5 checksum is "
                                               f"not torchvision's {md5}); it was deleted. Run again to retry. {fix}")))
            continue
        except NETWORK_ERRORS as error:
            partial.unlink(missing_ok=True)
            errors.append(download_failed(subject, url, error, fix))
            continue
        except BaseException:  # Ctrl-C or a full disk: no half file left behind
            partial.unlink(missing_ok=True)
            raise
        partial.replace(path)
        return
    raise errors[0]  # the main URL's failure; mirrors only stand in for it


def fetch_with_sha256_prefix(url: str, path: Path, subject: str, fix: str) -> None:
    """`path` from `url` with torch.hub's downloader (a progress bar on stderr), which checks the SHA-256 prefix in
    the file's name (torchvision's weight files carry one: resnet18-f37072fd.pth) and moves the file into place only
    when whole."""
    import torch.hub

    refuse_if_offline(subject, url, fix)
    named_hash = torch.hub.HASH_REGEX.search(path.name)
    hash_prefix = named_hash.group(1) if named_hash else None
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info(f"{subject}: downloading {url} into {path.parent}")
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix)
    except RuntimeError as error:  # 'invalid hash value (expected ..., got ...)'; torch.hub deleted the file
        raise ImgrecError(one_line(f"{subject}: the download of {url} is corrupt (its SHA-256 checksum does not start "
                                   f"with the {hash_prefix} its name promises: {error}); nothing was saved. Run again "
                                   f"to retry. {fix}")) from error
    except NETWORK_ERRORS as error:
        raise download_failed(subject, url, error, fix) from error
