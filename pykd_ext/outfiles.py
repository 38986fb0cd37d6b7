"""Files leakhunt writes: snapshots (``--record``), the triage ``--out`` folder, the symbol cache.

The rules, for every one of them:

- A path is written only where nothing is, or where a regular file is (and then only when replacing
  it was asked for: ``--force``, or a file of leakhunt's own such as ``--out``'s summary). A device, a
  named pipe, a socket, a directory or a symbolic link in its place is never replaced, written
  through or followed: the write is refused in one line naming it (``/dev/full`` as root would
  otherwise become a regular file).
- A file appears whole or not at all: it is written to a temporary file in the same folder, which
  then replaces the path in one rename; on any error the temporary file is removed.
- A new file gets the permissions the user's umask gives (0644 under the usual 022), as other tools'
  outputs do.

Errors are ``OutputError`` (exit 6) with the path and the reason in words.
"""
from __future__ import annotations

import os
import stat
import tempfile
from typing import BinaryIO, Callable, IO

from .console import OutputError, why_not_written
from .sources import not_regular_reason

# A new file's permissions before the umask: read and write for everyone the umask lets in.
NEW_FILE_MODE = 0o666


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def refuse_unless_replaceable(path: str, overwrite: bool, what: str = "file") -> None:
    """Raise OutputError unless ``path`` is free, or a regular file that ``overwrite`` lets be replaced.

    A symbolic link is refused whatever it points to: leakhunt writes the file the user named, not
    the place a link leads to.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise OutputError(f"cannot write {what} {path}: {why_not_written(error)}") from None
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(f"{path} is a symbolic link: leakhunt does not write through links; name the file "
                          f"itself, or a new path")
    reason = not_regular_reason(info.st_mode, "regular file")
    if reason:
        raise OutputError(f"{path} {reason.split(';')[0]}: leakhunt writes {what}s only where nothing is or "
                          f"over a regular file, and replaces nothing else")
    if not overwrite:
        raise OutputError(f"{path} already exists; choose another name or pass --force to overwrite it")


def write_atomically(path: str, produce: Callable[[BinaryIO], None], overwrite: bool = True,
                     what: str = "file") -> None:
    """Write ``path`` whole or not at all: ``produce(stream)`` fills a temporary file in the same folder,
    which then replaces ``path`` (see the module's rules). Raises OutputError."""
    refuse_unless_replaceable(path, overwrite, what)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        handle, temporary = tempfile.mkstemp(prefix=".leakhunt-", suffix=".tmp", dir=folder)
    except OSError as error:
        raise OutputError(f"cannot write {what} {path}: {why_not_written(error)}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            produce(stream)
        os.chmod(temporary, NEW_FILE_MODE & ~current_umask())
        refuse_unless_replaceable(path, overwrite, what)  # again: something may have appeared meanwhile
        os.replace(temporary, path)
    except OSError as error:
        raise OutputError(f"cannot write {what} {path}: {why_not_written(error)}") from None
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass  # replaced: it is the file now


def write_text_atomically(path: str, text: str, what: str = "file") -> None:
    """``write_atomically`` for text, as UTF-8 (a file name that is not UTF-8 reaches the text escaped)."""
    data = text.encode("utf-8", "backslashreplace")
    write_atomically(path, lambda stream: stream.write(data), overwrite=True, what=what)


def open_for_append(path: str, what: str = "file") -> IO[str]:
    """Open ``path`` (created if missing, with the umask's permissions) to append text lines; the same
    refusals as ``refuse_unless_replaceable``, checked on what was opened, not only on the name."""
    refuse_unless_replaceable(path, overwrite=True, what=what)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(path, flags, NEW_FILE_MODE)
    except OSError as error:
        raise OutputError(f"cannot write {what} {path}: {why_not_written(error)}") from None
    try:
        reason = not_regular_reason(os.fstat(descriptor).st_mode, "regular file")
        if reason:
            raise OutputError(f"{path} {reason.split(';')[0]}: leakhunt writes {what}s only to regular files")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "a", encoding="utf-8")
    except BaseException:
        os.close(descriptor)
        raise


def make_folder(path: str, what: str = "folder", named: bool = False) -> None:
    """Create ``path`` (and its parents) unless it is a directory already; a file or a device in its
    place is refused, and so is a symbolic link unless the user ``named`` the path itself (``--out``)."""
    try:
        info = os.stat(path) if named else os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot create {what} {path}: {why_not_written(error)}") from None
        return
    except OSError as error:
        raise OutputError(f"cannot use {what} {path}: {why_not_written(error)}") from None
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(f"{path} is a symbolic link: leakhunt does not write through links into a place that "
                          f"was not named")
    if not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{path} {not_regular_reason(info.st_mode, 'folder').split(';')[0] or 'is a file, not a folder'}")
