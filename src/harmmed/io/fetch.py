"""Verified, atomic downloads of public files.

Every external file the workflow consumes goes through :func:`download`, so a run
either sees the exact bytes it pinned (by sha256) or fails loudly; it never sees a
half-written or silently substituted file.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import socket
import ssl
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..constants import PACKAGE_VERSION
from .storage import make_readable

_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class FetchError(RuntimeError):
    """A file could not be obtained or verified."""


class NetworkUnavailableError(FetchError):
    """The host could not be reached at all (DNS, refused connection, timeout)."""


class ChecksumMismatchError(FetchError):
    """The bytes obtained are not the bytes that were pinned."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, streamed so large weights do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def portable_path(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working directory when it lies inside it (so two identical runs
    in two folders record the same manifest), else as given."""
    path = Path(path)
    if path.is_absolute():
        try:
            return str(path.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)
    return str(path)


def normalize_sha256(value: str, what: str = "sha256") -> str:
    """Lower-case a pinned digest and reject anything that is not 64 hex digits.

    A typo in a pin must fail at configuration time, not as a confusing mismatch.
    """
    text = str(value).strip().lower()
    if not _SHA256_RE.match(text):
        raise ValueError(f"{what} must be 64 hexadecimal digits, got {value!r}")
    return text


_UNREACHABLE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}


def _is_network_failure(reason: object) -> bool:
    """True when a urllib failure reason means the host was never reached.

    TLS failures and local file errors are excluded: there the host (or disk)
    answered, and calling them "network unavailable" would mislead.
    """
    if isinstance(reason, ssl.SSLError):
        return False
    if isinstance(reason, (socket.gaierror, ConnectionError, TimeoutError)):
        return True
    return isinstance(reason, OSError) and reason.errno in _UNREACHABLE_ERRNOS


def download(
    url: str,
    dest: Path,
    expected_sha256: str | None = None,
    timeout: float = 60,
) -> str:
    """Fetch ``url`` into ``dest`` and return the file's sha256.

    The body is streamed into a temporary file next to ``dest`` and renamed into
    place only after the digest checks out, so ``dest`` is afterwards either the
    verified file or absent (a checksum mismatch also removes any older ``dest``).
    """
    dest = Path(dest)
    expected = normalize_sha256(expected_sha256, "expected_sha256") if expected_sha256 else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": f"harmmed/{PACKAGE_VERSION}"})
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as err:
                raise FetchError(f"HTTP error {err.code} ({err.reason}) fetching {url}") from err
            except urllib.error.URLError as err:
                if _is_network_failure(err.reason):
                    raise NetworkUnavailableError(
                        f"Network unavailable: the host of {url} is unreachable ({err.reason}). "
                        "Check the internet connection or the URL override."
                    ) from err
                raise FetchError(f"Could not fetch {url}: {err.reason}") from err
            except (TimeoutError, ConnectionError) as err:
                raise NetworkUnavailableError(
                    f"Network unavailable: the host of {url} is unreachable or stopped "
                    f"responding ({err!r})."
                ) from err
            except http.client.HTTPException as err:
                raise FetchError(f"Broken HTTP response from {url}: {err!r}") from err
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            dest.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"Checksum mismatch for {dest} downloaded from {url}: "
                f"expected sha256 {expected}, got {actual}. The file was not kept."
            )
        make_readable(tmp)
        os.replace(tmp, dest)
        return actual
    finally:
        tmp.unlink(missing_ok=True)
