"""Download published weights files into a local cache, verified by SHA-256.

`fetch` returns the cached file when it is there (no network needed)
and otherwise downloads it atomically: a partial or corrupt download never
sits under the final name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import posixpath
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from tqdm import tqdm

from resnext_jax._files import cache_path

__all__ = ("HashMismatchError", "WeightsUnavailableError", "cache_dir",
           "check_sha256", "fetch", "sha256_of", "torchvision_hash_prefix")

DOWNLOAD_TIMEOUT_S = 30  # Per socket operation, not for the whole file.
CHUNK_BYTES = 1 << 20
MIN_HASH_PREFIX = 8  # torchvision's file names carry 8 hex digits.
TEMP_SUFFIX = ".part"

_TORCHVISION_NAME = re.compile(r"^(?P<stem>.+)-(?P<hash>[0-9a-fA-F]{8,64})\.pth$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class HashMismatchError(ValueError):
    """A file's SHA-256 differs from the expected one."""


class WeightsUnavailableError(OSError):
    """A weights file could not be downloaded (no network, server error, or
    an interrupted transfer)."""


def cache_dir() -> pathlib.Path:
    """Where downloaded weights live: ``$RESNEXT_JAX_HOME``, else
    ``$XDG_CACHE_HOME/resnext_jax``, else ``~/.cache/resnext_jax``."""
    return cache_path("RESNEXT_JAX_HOME")


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of the file ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _normalized_hash(expected: str) -> str:
    # An empty or short prefix would accept almost any file.
    if not (isinstance(expected, str) and MIN_HASH_PREFIX <= len(expected) <= 64
            and _HEX.match(expected)):
        raise ValueError(f"expected SHA-256 {expected!r} must be {MIN_HASH_PREFIX} to 64 hex digits "
                         "(a full digest or a prefix of one)")
    return expected.lower()


def _matches(actual: str, expected: str) -> bool:
    return actual.startswith(_normalized_hash(expected))


def check_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise `HashMismatchError` unless the file's SHA-256 starts with
    ``expected`` (a full hex digest, or a prefix of at least 8 digits)."""
    expected = _normalized_hash(expected)
    actual = sha256_of(path)
    if not actual.startswith(expected):
        raise HashMismatchError(
            f"{os.fspath(path)}: SHA-256 is {actual}, expected {expected}"
            f"{'' if len(expected) == 64 else ' (prefix)'}")


def torchvision_hash_prefix(url_or_filename: str) -> str:
    """The SHA-256 prefix in a torchvision weights name,
    ``resnext50_32x4d-7cdf4587.pth`` -> ``"7cdf4587"``."""
    name = _url_basename(url_or_filename)
    match = _TORCHVISION_NAME.match(name)
    if match is None:
        raise ValueError(f"{name!r} does not carry a hash: torchvision names are "
                         "<name>-<8+ hex digits of the SHA-256>.pth")
    return match.group("hash").lower()


def _url_basename(url: str) -> str:
    path = urllib.parse.urlsplit(url).path if "://" in url else url
    return posixpath.basename(urllib.parse.unquote(path))


def _checked_filename(filename: str, url: str) -> str:
    # Only a plain name: "../x" or "a/b" would write outside the cache.
    if not filename or filename in (".", "..") or "/" in filename or os.sep in filename:
        raise ValueError(f"file name {filename!r} (from {url}) must be a plain file name; "
                         "pass filename= to choose one")
    if filename.startswith(".") and filename.endswith(TEMP_SUFFIX):
        raise ValueError(f"file name {filename!r} looks like one of fetch's temporary files")
    return filename


def fetch(url: str, *, sha256: str, filename: str | None = None,
          directory: str | os.PathLike | None = None, progress: bool = True) -> pathlib.Path:
    """The path of the weights file ``url``, cached under ``directory`` (default
    `cache_dir`) as ``filename`` (default: the URL's last part).

    A cached file is verified and returned without network. Otherwise the file
    is downloaded, checked (length and ``sha256``, a full digest or a prefix)
    and only then put in place. Raises `HashMismatchError` or
    `WeightsUnavailableError`."""
    _normalized_hash(sha256)  # Refuse a bad hash before any network.
    name = _checked_filename(filename or _url_basename(url), url)
    folder = pathlib.Path(directory) if directory is not None else cache_dir()
    target = folder / name
    if target.exists():
        return _verified_cached(target, sha256)
    folder.mkdir(parents=True, exist_ok=True)
    _download_verified(url, target, sha256, progress)
    return target


def _verified_cached(target: pathlib.Path, sha256: str) -> pathlib.Path:
    if not target.is_file():
        raise FileExistsError(f"{target} exists but is not a file; move it away to download the weights")
    try:
        check_sha256(target, sha256)
    except HashMismatchError as e:
        # Not ours to delete: the user may have put it there on purpose.
        raise HashMismatchError(
            f"{e}. The cached file is not the published one (damaged, or another "
            f"version): delete or replace {target}") from None
    return target


def _download_verified(url: str, target: pathlib.Path, sha256: str, progress: bool) -> None:
    # A hidden ".<name>.<random>.part" in the same folder: never taken for the
    # final file, and os.replace within one file system is atomic.
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    temp = pathlib.Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _stream(url, out, target, progress)
        if not _matches(actual, sha256):
            raise HashMismatchError(
                f"the file downloaded from {url} has SHA-256 {actual}, expected "
                f"{_normalized_hash(sha256)}; nothing was saved at {target}")
        os.replace(temp, target)
    except BaseException:  # Ctrl-C too: no temporary file is left behind.
        temp.unlink(missing_ok=True)
        raise


def _stream(url: str, out, target: pathlib.Path, progress: bool) -> str:
    """Copy ``url`` into ``out``; return its SHA-256 hex digest."""
    digest = hashlib.sha256()
    received = 0
    expected_length = None
    request = urllib.request.Request(url, headers={"User-Agent": "resnext_jax"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            expected_length = _content_length(response)
            with tqdm(total=expected_length, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=target.name, file=sys.stderr, leave=False,
                      disable=None if progress else True) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise _unavailable(url, target, f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _unavailable(url, target, str(e.reason)) from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
        raise _unavailable(url, target, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
    # urllib does not always raise when the server closes the connection
    # early, so compare with what the server announced.
    if expected_length is not None and received != expected_length:
        raise _unavailable(url, target, f"the transfer stopped after {received} of "
                                        f"{expected_length} bytes")
    return digest.hexdigest()


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


def _unavailable(url: str, target: pathlib.Path, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"cannot download {url} ({reason}); to use it anyway, download the file "
        f"by other means and put it at {target}")
