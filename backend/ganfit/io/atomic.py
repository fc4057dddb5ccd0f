"""Atomic writes of folders and files.

A reader (the Blender add-on, a second CLI run, a crashed-and-restarted engine) must never see a
half-written result. Everything is written into a hidden temporary sibling of the destination
(same parent, so the final ``rename`` stays on one file system and is atomic), flushed to disk,
then renamed into place. Any exception, ``KeyboardInterrupt`` included, removes the temporary
and leaves the destination as it was before.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ganfit.errors import OutputError

__all__ = ["atomic_directory", "atomic_file", "atomic_savez", "check_can_create"]

log = logging.getLogger(__name__)


def _fsync_path(path: Path, directory: bool = False) -> None:
    """Flush one file (or a folder's entries) to disk; folders cannot be opened on Windows."""
    flags = os.O_RDONLY
    if directory:
        if os.name == "nt":
            return
        flags |= getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems (and folders on some platforms) refuse fsync
        if not directory or exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and every folder's entries, so the rename publishes data."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder), directory=True)


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree; used for cleanup, so it never raises."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def _writable_error(parent: Path, exc: OSError) -> OutputError:
    """Turn an OS error on the parent folder into one line the user can act on."""
    if isinstance(exc, (NotADirectoryError, FileExistsError)) or exc.errno in (
        errno.ENOTDIR,
        errno.EEXIST,
    ):
        return OutputError(f"{parent}: is not a folder; choose another output location")
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(
            f"{parent}: cannot write here (permission denied or read-only); "
            "choose a folder you can write to"
        )
    if exc.errno == errno.ENOSPC:
        return OutputError(
            f"{parent}: no space left on the device; free some space or write elsewhere"
        )
    return OutputError(
        f"{parent}: cannot write here ({exc.strerror or exc}); choose another location"
    )


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _storage_error(parent: Path, exc: OSError) -> Exception:
    """A full disk or lost permission while writing is the user's to fix; anything else is not."""
    if exc.errno in _STORAGE_ERRNOS:
        return _writable_error(parent, exc)
    return exc


def _make_parents(parent: Path) -> list[Path]:
    """Create missing parent folders; return the ones created (deepest last) for cleanup."""
    missing: list[Path] = []
    probe = parent
    while not probe.exists() and not probe.is_symlink():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{probe}: is a file, not a folder; choose another output location")
    created: list[Path] = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            _remove_empty(created)
            raise _writable_error(folder.parent, exc) from exc
        created.append(folder)
    return created


def _remove_empty(created: list[Path]) -> None:
    """Remove parent folders this module created, deepest first, if they are still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            break


def check_can_create(target: Path, force: bool, what: str = "folder") -> None:
    """Refuse early (before any slow work) when ``target`` exists and ``force`` is not given.

    Callers that compute for minutes before writing use this to fail fast; the write itself
    checks again.
    """
    target = Path(target)
    if target.exists() or target.is_symlink():
        if not force:
            raise OutputError(
                f"{target}{os.sep if what == 'folder' else ''}: already exists; "
                f"pass --force to replace it or choose another {what}"
            )
        if what == "folder" and not target.is_dir():
            raise OutputError(f"{target}: is a file, not a folder; choose another output folder")
        if what == "file" and target.is_dir():
            raise OutputError(f"{target}: is a folder, not a file; choose another output file")


@contextlib.contextmanager
def atomic_directory(
    target: Path | str,
    *,
    force: bool = False,
    replaceable: Callable[[Path], bool] | None = None,
    replaceable_hint: str = "it does not look like something this tool wrote",
) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes ``target`` in one rename.

    ``force`` replaces an existing ``target``: the old folder is renamed aside, the new one
    renamed in, then the old one deleted; if the second rename fails the old one is put back.
    ``replaceable`` guards ``force`` against deleting a folder the user did not mean (say their
    home folder): when it returns False for the existing folder the write is refused.
    """
    target = Path(target)
    parent = target.parent
    check_can_create(target, force, "folder")
    if (
        (target.exists() or target.is_symlink())
        and replaceable is not None
        and not replaceable(target)
    ):
        raise OutputError(
            f"{target}: exists and will not be replaced ({replaceable_hint}); "
            "choose another output folder"
        )

    created_parents = _make_parents(parent)
    tmp: Path | None = None
    aside: Path | None = None
    published = False
    try:
        try:
            # mkdir (not mkdtemp) so the published folder gets the user's umask, not 0700
            tmp = parent / f".{target.name}.{uuid.uuid4().hex[:12]}.partial"
            tmp.mkdir()
        except OSError as exc:
            raise _writable_error(parent, exc) from exc
        try:
            yield tmp
            _fsync_tree(tmp)
        except OSError as exc:
            mapped = _storage_error(parent, exc)
            if mapped is exc:
                raise
            raise mapped from exc
        if target.exists() or target.is_symlink():
            if not force:  # appeared while we were writing
                check_can_create(target, force, "folder")
            aside = parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
            os.rename(target, aside)
            os.rename(tmp, target)
        else:
            try:
                os.rename(tmp, target)
            except OSError as exc:
                if target.exists():
                    check_can_create(target, False, "folder")
                raise _writable_error(parent, exc) from exc
        published = True
        _fsync_path(parent, directory=True)
        log.debug("published %s", target)
    finally:
        if tmp is not None and not published:
            _remove(tmp)
        if aside is not None:
            if published:
                _remove(aside)
            else:
                _restore(aside, target)
        if not published:
            _remove_empty(created_parents)


def _restore(aside: Path, target: Path) -> None:
    """Put a folder that was renamed aside back in place; never lose it, even if that fails."""
    if not (aside.exists() or aside.is_symlink()):
        return
    try:
        os.rename(aside, target)
    except OSError as exc:
        log.error(
            "could not put %s back at %s (%s); the old result is kept at %s",
            aside,
            target,
            exc,
            aside,
        )


@contextlib.contextmanager
def atomic_file(target: Path | str, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically.

    The body writes the file at the yielded path (by any means); this flushes and renames it.
    """
    target = Path(target)
    check_can_create(target, force, "file")
    created_parents = _make_parents(target.parent)
    tmp: Path | None = None
    published = False
    try:
        try:
            # os.open with 0o666 (not mkstemp's 0600) so the file gets the user's umask
            tmp = target.parent / f".{target.stem}.{uuid.uuid4().hex[:12]}.partial{target.suffix}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise _writable_error(target.parent, exc) from exc
        os.close(fd)
        try:
            yield tmp
            _fsync_path(tmp)
        except OSError as exc:
            mapped = _storage_error(target.parent, exc)
            if mapped is exc:
                raise
            raise mapped from exc
        if not force and (target.exists() or target.is_symlink()):
            check_can_create(target, False, "file")
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise _writable_error(target.parent, exc) from exc
        published = True
        _fsync_path(target.parent, directory=True)
    finally:
        if tmp is not None and not published:
            _remove(tmp)
        if not published:
            _remove_empty(created_parents)


def atomic_savez(target: Path | str, arrays: dict[str, Any], compressed: bool = False) -> Path:
    """``np.savez`` (``compressed``: ``np.savez_compressed``, lossless, read the same way) to
    ``target`` through ``atomic_file`` (replacing it): model files written by the trainers are
    never left half-written."""
    import numpy as np

    with atomic_file(target, force=True) as tmp:
        with open(tmp, "wb") as handle:
            (np.savez_compressed if compressed else np.savez)(handle, **arrays)
    return Path(target)
