"""Input and output files, safely: only regular files are read, never more than a cap, and every
file is written whole or not at all.

A FIFO or a character device (``/dev/zero``) would block or never end; they are refused before
they are opened.  Writes go through a temporary file in the same directory and a rename, so an
interrupted or failed run leaves no half-written report, manifest or guest behind.
"""

from __future__ import annotations

import os
import stat
import tempfile


class InputError(ValueError):
    """A path that is no regular file, or one larger than the cap (one-line message)."""


def check_regular(path: str | os.PathLike, what: str = "file", cap: int | None = None) -> int:
    """``path``'s size if it is a regular file no larger than ``cap``; else InputError."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory; a {what} must be a regular file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a character device" if stat.S_ISCHR(st.st_mode)
                else "a block device" if stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "not a regular file")
        raise InputError(f"{path}: is {kind}; a {what} must be a regular file")
    if cap is not None and st.st_size > cap:
        raise InputError(f"{path}: {what} larger than {cap >> 20} MiB ({st.st_size} bytes)")
    return st.st_size


def read_regular(path: str | os.PathLike, what: str = "file", cap: int = 1 << 30) -> bytes:
    """The bytes of the regular file ``path`` (at most ``cap``); InputError otherwise."""
    path = os.fspath(path)
    check_regular(path, what, cap)
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise InputError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if len(data) > cap:   # it grew since the check
        raise InputError(f"{path}: {what} larger than {cap >> 20} MiB")
    return data


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """Fail now, before any work, if ``path`` cannot be written: its directory is missing, the
    path is a directory, or a file cannot be created beside it (tried, as the atomic write will:
    permission bits alone do not tell root or a read-only mount)."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory; the {what} must be a file")
    if not os.path.isdir(parent):
        raise InputError(f"{path}: no such directory: {parent}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".pgvirt-probe-", dir=parent)
    except OSError as e:
        raise InputError(f"{path}: cannot write in {parent}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half a file.
    An error names ``path`` (not the temporary file)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pgvirt-", dir=d)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror, path) from None
        raise
