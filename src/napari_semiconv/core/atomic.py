"""Atomic file writing: a file on disk is either the old one, the complete new one, or absent.

Every output of this project (label TIFFs, CSVs, run records, checkpoints) goes through these
helpers, so an interrupted run, a full disk or a read-only folder never leaves a half-written file
behind and never destroys a previous result.

How: the data go to a temporary file in the *same directory* as the target (so the final
``os.replace`` is a rename within one filesystem, which POSIX and Windows perform atomically),
the temporary file is flushed and fsync'ed, then renamed over the target. On any exception the
temporary file is removed and the target is untouched.

Overwriting is refused by default: if the target exists and ``overwrite`` is False,
:class:`FileExistsError` is raised *before* anything is written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write_bytes", "atomic_writer", "check_folder_writable", "check_writable_target"]

# The process umask, read once at import (os.umask can only be read by setting it, which is not
# thread-safe, so it is not done per write). mkstemp creates files 0600; the finished file gets the
# permissions an ordinary open() would have given it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

_MODES = {"w", "wt", "wb"}


def check_writable_target(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Return ``path`` as a Path after checking it can be a write target; write nothing.

    Raises:
        FileExistsError: the file exists and ``overwrite`` is False.
        IsADirectoryError: the path is an existing directory.
        NotADirectoryError / FileNotFoundError: the parent is a file / does not exist.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {target}: it is a directory; choose a file name")
    parent = target.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(
            f"cannot write {target}: {parent} is a file, not a folder; choose another folder"
        )
    if not parent.exists():
        raise FileNotFoundError(
            f"cannot write {target}: the folder {parent} does not exist; create it first"
        )
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{target} already exists; refusing to overwrite it "
            "(choose another name or pass overwrite=True)"
        )
    return target


def check_folder_writable(folder: str | os.PathLike[str]) -> Path:
    """Check that a file can be created in ``folder`` (by creating and removing an empty
    temporary one), so long work finds a read-only or full folder before it starts, not when it
    saves its result.

    Raises:
        PermissionError / OSError: naming the folder and the system's reason.
    """
    folder = Path(folder)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".semiconv-probe-"):
            pass
    except OSError as exc:
        detail = exc.strerror or str(exc) or type(exc).__name__
        message = f"cannot write in {folder}: {detail}; choose another folder"
        if exc.errno is not None:
            raise type(exc)(exc.errno, message) from exc
        raise OSError(message) from exc
    return folder


def _reraise_clearly(exc: OSError, target: Path) -> None:
    """Re-raise an OSError from writing ``target`` with a message that names the file.

    ``OSError(errno, ...)`` picks the matching subclass (PermissionError, ...), so callers can still
    catch the specific type.
    """
    detail = exc.strerror or str(exc) or type(exc).__name__
    msg = (
        f"could not write {target}: {detail}. Nothing was written there"
        f"{' and the existing file was left unchanged' if target.exists() else ''}."
    )
    if exc.errno is not None:  # no filename argument: the message names it already
        raise OSError(exc.errno, msg) from exc
    raise OSError(msg) from exc


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str],
    mode: str = "wb",
    overwrite: bool = False,
    encoding: str | None = "utf-8",
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Context manager yielding a file object whose contents replace ``path`` only on success.

    Args:
        path: the final file.
        mode: ``"wb"`` (bytes) or ``"w"``/``"wt"`` (text).
        overwrite: replace an existing file; if False an existing file raises
            :class:`FileExistsError` before anything is written.
        encoding, newline: for text mode only (default UTF-8).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False (also re-checked just before the
            rename, so a file that appeared meanwhile is not clobbered either).
        OSError: the folder is read-only, the disk is full, ...; the message names the file, the
            temporary file is removed and any existing target is left unchanged.
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_writer mode must be one of {sorted(_MODES)}, got {mode!r}")
    target = check_writable_target(path, overwrite)
    binary = "b" in mode
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        _reraise_clearly(exc, target)
    tmp = Path(tmp_name)
    try:
        if binary:
            handle = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        if not overwrite and target.exists():
            raise FileExistsError(
                f"{target} appeared while it was being written; refusing to overwrite it"
            )
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            _reraise_clearly(exc, target)
        raise
    _fsync_directory(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically and return the path (see :func:`atomic_writer`)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"atomic_write_bytes needs bytes, got {type(data).__name__}")
    with atomic_writer(path, "wb", overwrite=overwrite) as handle:
        handle.write(data)
    return Path(path)
