"""Atomic writes of folders and files.

A reader (the Blender add-on, a second CLI run, a crashed-and-restarted engine) must never see a
half-written result. Everything is written into a hidden temporary sibling of the destination
(same parent, so the final ``rename`` stays on one file system and is atomic), flushed to disk,
then renamed into place. Any exception, ``KeyboardInterrupt`` included, removes the temporary
and leaves the destination as it was before.

A writer that is killed (SIGKILL, a power cut: no ``finally`` runs) leaves its temporary behind.
The next write to the same place removes it, and puts back an old folder that the killed writer
had renamed aside but not yet replaced. It never touches a temporary a live writer is using: a
writer holds an exclusive ``flock`` on its temporary for as long as it exists (the kernel drops
it when the process ends, however it ends), and the temporary's name carries the writer's PID,
which covers the instant between creating the temporary and locking it. Where ``flock`` is
missing (Windows) leftovers are left alone.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import shutil
import struct
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ganfit.errors import OutputError

try:
    import fcntl
except ImportError:  # Windows: no flock, so leftovers cannot be told from live temporaries
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "atomic_directory",
    "atomic_file",
    "atomic_savez",
    "check_can_create",
    "clean_leftovers",
    "normalise_target",
    "write_npz",
]

log = logging.getLogger(__name__)

#: Digits allowed for the PID in a temporary's name, so the longest usable output name is the
#: same for every process; and the random part's length.
_PID_DIGITS = 10
_RANDOM_HEX = 12
#: What a temporary's name adds to the target's: "." + name + "." + pid + "-" + hex + ".partial"
_TEMP_NAME_EXTRA = 1 + 1 + _PID_DIGITS + 1 + _RANDOM_HEX + len(".partial")
#: An unlocked temporary whose writer's PID is alive is left alone this long (seconds): the
#: writer may be between creating and locking it (or the PID was reused; then it goes later).
_GRACE_S = 60.0
#: Files the operating system drops into folders it shows (Finder, Explorer); not the user's.
OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


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
    if exc.errno in _FULL_ERRNOS:
        return OutputError(
            f"{parent}: no space left on the device; free some space or write elsewhere"
        )
    return OutputError(
        f"{parent}: cannot write here ({exc.strerror or exc}); choose another location"
    )


_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_STORAGE_ERRNOS = _FULL_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM}


def _write_error(target: Path, parent: Path, exc: OSError) -> OutputError:
    """A full disk is named by the output being written (never by its hidden temporary); a
    refused folder by the folder."""
    if exc.errno in _FULL_ERRNOS:
        return _writable_error(target, exc)
    return _writable_error(parent, exc)


def _storage_error(target: Path, parent: Path, exc: BaseException) -> BaseException:
    """A full disk or lost permission while writing is the user's to fix; anything else is not.

    An ``OutputError`` from a nested atomic write (an export inside a result's temporary) names
    that temporary; it is named again by the real output.
    """
    cause = exc.__cause__ if isinstance(exc, OutputError) else exc
    if isinstance(cause, OSError) and cause.errno in _STORAGE_ERRNOS:
        return _write_error(target, parent, cause)
    return exc


def _lexists(path: Path) -> bool:
    """Whether anything (a broken link included) is at ``path``; a path the OS cannot even look
    up (too long, a link loop) is the user's to change, so it is one line, not a traceback."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise OutputError(
                f"{path}: the path is too long; choose a shorter name or a shorter folder path"
            ) from exc
        raise OutputError(
            f"{path}: cannot be used ({exc.strerror or exc}); choose another output location"
        ) from exc
    except ValueError as exc:  # an embedded NUL byte
        raise OutputError(f"{path!r}: not a valid path ({exc}); choose another name") from exc
    return True


def normalise_target(target: Path | str) -> Path:
    """``.``, ``..`` and ``/`` have no name to put a temporary beside; use the absolute path."""
    target = Path(target)
    if target.name in ("", ".", ".."):
        target = Path(os.path.abspath(target))
    return target


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its closest ancestor that exists (what has to accept the new folders)."""
    probe = folder
    while not _lexists(probe) and probe.parent != probe:
        probe = probe.parent
    return probe


def _check_name_length(target: Path) -> None:
    """Refuse a name whose temporary (the name plus ~33 characters) the file system rejects."""
    try:
        name_max = os.pathconf(_nearest_existing(target.parent), "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # Windows, or a file system that will not say
        name_max = 255
    limit = max(int(name_max) - _TEMP_NAME_EXTRA, 1)
    length = len(os.fsencode(target.name))
    if length > limit:
        raise OutputError(
            f"{target}: the name is too long ({length} bytes, at most {limit} here); "
            "choose a shorter name"
        )


def _check_parent(target: Path) -> None:
    """Refuse up front a location the write would fail on: a file where a folder must be, a
    folder this user cannot write, a read-only file system. Nothing is created."""
    ancestor = _nearest_existing(target.parent)
    if not ancestor.is_dir():
        raise OutputError(f"{ancestor}: is a file, not a folder; choose another output location")
    if os.name != "posix":  # Windows' access() reads the folder's read-only flag, which lies
        return
    try:
        read_only = bool(os.statvfs(ancestor).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise OutputError(
            f"{ancestor}: is on a read-only file system; choose a folder you can write to"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(
            f"{ancestor}: cannot write here (permission denied); choose a folder you can write to"
        )


def _check_not_cwd(target: Path) -> None:
    """Replacing the folder a process runs in leaves that process (and the user's shell) in a
    deleted folder, and the rename fails on some systems: refuse it."""
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:
        return
    real = os.path.realpath(target)
    if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
        raise OutputError(
            f"{target}: is the folder ganfit runs in (or holds it), so it cannot be replaced; "
            "run ganfit from another folder or choose another output folder"
        )


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


def check_can_create(target: Path | str, force: bool, what: str = "folder") -> None:
    """Refuse early (before any slow work) what the write would refuse: ``target`` exists and
    ``force`` is not given, the name is too long, the parent is a file or cannot be written,
    ``target`` is the folder we run in.

    Callers that compute for minutes before writing use this to fail fast; the write itself
    checks again.
    """
    target = normalise_target(target)
    _check_name_length(target)
    if _lexists(target):
        if not force:
            raise OutputError(
                f"{target}{os.sep if what == 'folder' else ''}: already exists; "
                f"pass --force to replace it or choose another {what}"
            )
        if what == "folder" and not target.is_dir():
            raise OutputError(f"{target}: is a file, not a folder; choose another output folder")
        if what == "file" and target.is_dir():
            raise OutputError(f"{target}: is a folder, not a file; choose another output file")
        if what == "folder":
            _check_not_cwd(target)
    _check_parent(target)


# --- leftovers of killed writers -------------------------------------------------------------


def _temp_tag() -> str:
    """The writer's PID and a random part: unique, and tells a cleaner whose temporary it is."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:_RANDOM_HEX]}"


def _leftover_pattern(target: Path, what: str) -> re.Pattern[str]:
    """Names of this target's temporaries (also the PID-less ones of earlier ganfit versions)."""
    tag = r"(?:(?P<pid>[0-9]+)-)?[0-9a-f]{8,12}"
    if what == "folder":
        return re.compile(rf"\.{re.escape(target.name)}\.{tag}\.(?P<kind>partial|old)")
    return re.compile(
        rf"\.{re.escape(target.stem)}\.{tag}\.(?P<kind>partial){re.escape(target.suffix)}"
    )


def _lock(fd: int, wait: bool = False) -> bool:
    """Take the exclusive flock on ``fd``; False if another process holds it (or no flock)."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


def _hold(path: Path, wait: bool = False) -> int | None:
    """Open ``path`` (a file or folder) and hold its flock; the descriptor, or None."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    if not _lock(fd, wait):
        os.close(fd)
        return None
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _pid_alive(pid: int | None) -> bool:
    """Whether a process with this PID runs here (None: a name without PID, assume it might)."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks (POSIX; never called without flock, so never on Windows)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is someone else's
        return True
    return True


def _claim(path: Path, pid: int | None) -> int | None:
    """Lock a temporary that no live writer uses; the descriptor to release after removing it,
    or None when it is (or may be) in use."""
    fd = _hold(path)
    if fd is None:
        return None
    if _pid_alive(pid):
        try:
            info = os.lstat(path)
            young = time.time() - info.st_mtime < _GRACE_S  # mkdir/create set it
        except OSError:
            young = True
        if young:
            _release(fd)
            return None
    return fd


def clean_leftovers(target: Path | str, what: str = "folder") -> None:
    """Remove what killed writers left beside ``target``; put back an old folder that one had
    renamed aside when ``target`` is missing (it was killed mid-swap). Never raises."""
    target = normalise_target(target)
    if fcntl is None:
        return
    pattern = _leftover_pattern(target, what)
    try:
        names = os.listdir(target.parent)
    except (OSError, ValueError):
        return
    prefix = f".{target.name if what == 'folder' else target.stem}."  # cheap test first: a
    # dataset folder holds thousands of files and gets one atomic write per photo
    found = [
        (m, target.parent / m.string)
        for m in map(pattern.fullmatch, (n for n in names if n.startswith(prefix)))
        if m
    ]
    olds = [(m, p) for m, p in found if m["kind"] == "old"]
    # the newest aside first: if several were left, it is the last result written
    olds.sort(key=lambda item: _ctime(item[1]), reverse=True)
    partials = [(m, p) for m, p in found if m["kind"] == "partial"]
    for match, path in olds + partials:
        fd = _claim(path, int(match["pid"]) if match["pid"] else None)
        if fd is None:
            continue
        try:
            if match["kind"] == "old" and not _lexists(target):
                os.rename(path, target)
                log.warning("%s: put back the previous result that a stopped write had set aside",
                            target)
            else:
                _remove(path)
                log.info("removed %s, left by a write that was stopped", path)
        except (OSError, OutputError) as exc:
            log.warning("could not clean up %s: %s", path, exc)
        finally:
            _release(fd)


def _ctime(path: Path) -> float:
    try:
        return os.lstat(path).st_ctime
    except OSError:
        return 0.0


# --- atomic writes ---------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_directory(
    target: Path | str,
    *,
    force: bool = False,
    replaceable: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes ``target`` in one rename.

    ``force`` replaces an existing ``target``: the old folder is renamed aside, the new one
    renamed in, then the old one deleted; if the second rename fails the old one is put back.
    ``replaceable`` guards ``force`` against deleting what the user did not mean (say their
    home folder, or notes they put in a result folder): it raises ``OutputError`` for an
    existing folder that must not be replaced. It is asked before writing and again just
    before the swap.
    """
    target = normalise_target(target)
    parent = target.parent
    clean_leftovers(target, "folder")
    check_can_create(target, force, "folder")
    if _lexists(target) and replaceable is not None:
        replaceable(target)

    created_parents = _make_parents(parent)
    tmp: Path | None = None
    tmp_lock: int | None = None
    aside: Path | None = None
    aside_lock: int | None = None
    published = False
    try:
        try:
            # mkdir (not mkdtemp) so the published folder gets the user's umask, not 0700
            tmp = parent / f".{target.name}.{_temp_tag()}.partial"
            tmp.mkdir()
        except OSError as exc:
            tmp = None
            raise _write_error(target, parent, exc) from exc
        tmp_lock = _hold(tmp)
        try:
            yield tmp
            _fsync_tree(tmp)
        except (OSError, OutputError) as exc:
            mapped = _storage_error(target, parent, exc)
            if mapped is exc:
                raise
            raise mapped from exc
        try:
            if _lexists(target):
                if not force:  # appeared while we were writing
                    check_can_create(target, force, "folder")
                if replaceable is not None:  # the user may have added a file meanwhile
                    replaceable(target)
                # lock the old folder before it moves, so a cleaner leaves the aside alone
                aside_lock = _hold(target, wait=True)
                aside = parent / f".{target.name}.{_temp_tag()}.old"
                try:
                    os.rename(target, aside)
                except OSError:
                    aside = None
                    raise
                os.rename(tmp, target)
            else:
                try:
                    os.rename(tmp, target)
                except OSError:
                    if target.exists():
                        check_can_create(target, False, "folder")
                    raise
        except OSError as exc:
            raise _write_error(target, parent, exc) from exc
        published = True
        _fsync_path(parent, directory=True)
        log.debug("published %s", target)
    finally:
        if not published and tmp is not None and not os.path.lexists(tmp) and _lexists(target):
            published = True  # interrupted (Ctrl-C, SIGTERM) just after the rename: it is done
        if tmp is not None and not published:
            _remove(tmp)
        if aside is not None:
            if published:
                _remove(aside)
            else:
                _restore(aside, target)
        _release(aside_lock)
        _release(tmp_lock)
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
    clean_leftovers(target, "file")
    check_can_create(target, force, "file")
    created_parents = _make_parents(target.parent)
    tmp: Path | None = None
    fd: int | None = None
    published = False
    try:
        try:
            # os.open with 0o666 (not mkstemp's 0600) so the file gets the user's umask
            tmp = target.parent / f".{target.stem}.{_temp_tag()}.partial{target.suffix}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            tmp = None
            raise _write_error(target, target.parent, exc) from exc
        # POSIX: keep the descriptor, holding the flock that marks the temporary as in use;
        # Windows cannot rename a file that is open, and has no flock anyway
        if not _lock(fd):
            os.close(fd)
            fd = None
        try:
            yield tmp
            _fsync_path(tmp)
        except (OSError, OutputError) as exc:
            mapped = _storage_error(target, target.parent, exc)
            if mapped is exc:
                raise
            raise mapped from exc
        if not force and (target.exists() or target.is_symlink()):
            check_can_create(target, False, "file")
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise _write_error(target, target.parent, exc) from exc
        published = True
        _fsync_path(target.parent, directory=True)
    finally:
        if tmp is not None and not published:
            _remove(tmp)
        _release(fd)
        if not published:
            _remove_empty(created_parents)


def write_npz(
    file: Path | BinaryIO,
    arrays: Mapping[str, Any],
    compressed: bool = True,
    level: int | None = None,
    stored: Collection[str] = (),
    reuse: Collection[str] = (),
) -> None:
    """Write ``arrays`` as an ``.npz`` that ``numpy.load`` reads (no pickles); ``level``: the
    zlib level when compressed (None: zlib's default, as ``np.savez_compressed``); ``stored``:
    names kept uncompressed even so (arrays that barely compress, where deflating only costs);
    ``reuse``: names whose deflated bytes are remembered and written again, not deflated again,
    when the next call brings the same bytes (the expression basis every result repeats).

    ``np.savez`` leaves its zip file open when a write fails (a full disk), and the zip's
    ``__del__`` later fails again and prints a second traceback; here every file is closed
    before the error propagates.
    """
    import numpy as np

    if reuse and compressed:
        members = []
        for name, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
            raw = buffer.getbuffer()
            if name in stored:
                members.append((f"{name}.npy", raw, None))
            else:
                members.append((f"{name}.npy", raw, _deflated(raw, -1 if level is None else level, name if name in reuse else None)))
        if sum(len(raw) + (len(data) if data is not None else 0) for _, raw, data in members) < 0x7FFF0000:
            with contextlib.ExitStack() as stack:
                handle = file if not isinstance(file, (str, Path)) else stack.enter_context(open(file, "wb"))
                _write_zip(handle, members)
            return

    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with contextlib.ExitStack() as stack:
        handle = file if not isinstance(file, (str, Path)) else stack.enter_context(open(file, "wb"))
        archive = stack.enter_context(zipfile.ZipFile(handle, "w", compression=method, compresslevel=level))
        for name, value in arrays.items():
            member: str | zipfile.ZipInfo = f"{name}.npy"
            if name in stored:
                member = zipfile.ZipInfo(f"{name}.npy", date_time=time.localtime(time.time())[:6])
                member.compress_type = zipfile.ZIP_STORED
            with archive.open(member, "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.asanyarray(value), allow_pickle=False)


#: write_npz's remembered deflated members: (name, raw size) -> (raw bytes, zlib level, deflated bytes).
_DEFLATED: dict[tuple[str, int], tuple[bytes, int, bytes]] = {}
_DEFLATED_LOCK = threading.Lock()


def _deflated(raw: memoryview, level: int, reuse: str | None) -> bytes:
    """``raw`` as a raw deflate stream (what a zip's deflated member holds), the remembered one
    when member ``reuse`` had the same bytes, deflated at ``level``, last time. Comparing 2.8 MB
    takes half a millisecond; deflating them at level 1, 18."""
    key = (reuse, raw.nbytes)  # one slot per name and size: a result writer repeats one basis per model
    if reuse is not None:
        with _DEFLATED_LOCK:
            known = _DEFLATED.get(key)
        # bytes == bytes is a memcmp (0.5 ms with the copy); memoryview == bytes compares item by item (6 ms)
        if known is not None and known[1] == level and known[0] == bytes(raw):
            return known[2]
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    data = compressor.compress(raw) + compressor.flush()
    if reuse is not None:
        with _DEFLATED_LOCK:
            if len(_DEFLATED) >= 8:
                _DEFLATED.clear()
            _DEFLATED[key] = (bytes(raw), level, data)
    return data


def _write_zip(handle: BinaryIO, members: list[tuple[str, memoryview, bytes | None]]) -> None:
    """A zip archive of ``(name, raw bytes, deflated bytes or None for stored)`` members, the
    whole archive under 2 GB (no zip64), written with one ``write`` per part."""
    stamp = time.localtime(time.time())
    dos_time = stamp.tm_hour << 11 | stamp.tm_min << 5 | stamp.tm_sec // 2
    dos_date = (max(stamp.tm_year, 1980) - 1980) << 9 | stamp.tm_mon << 5 | stamp.tm_mday
    central, offset = [], 0
    for name, raw, data in members:
        encoded = name.encode("ascii")
        method, payload = (zipfile.ZIP_STORED, raw) if data is None else (zipfile.ZIP_DEFLATED, data)
        fields = (20, 0, method, dos_time, dos_date, zlib.crc32(raw), len(payload), raw.nbytes, len(encoded))
        header = struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields, 0) + encoded
        handle.write(header)
        handle.write(payload)
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 3 << 8 | 20, *fields, 0, 0, 0, 0, 0o600 << 16, offset)
                       + encoded)
        offset += len(header) + len(payload)
    directory = b"".join(central)
    handle.write(directory)
    handle.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), offset, 0))


def atomic_savez(target: Path | str, arrays: dict[str, Any], compressed: bool = False) -> Path:
    """``np.savez`` (``compressed``: ``np.savez_compressed``, lossless, read the same way) to
    ``target`` through ``atomic_file`` (replacing it): model files written by the trainers are
    never left half-written."""
    with atomic_file(target, force=True) as tmp:
        write_npz(tmp, arrays, compressed=compressed)
    return Path(target)
