"""Reading and writing files that chipbench does not trust: a run folder and everything in it, a
data dir, a ``--config`` file.

Such a folder may come from someone else, so any name in it may be a symbolic link (to a file of
the user's elsewhere, to ``/dev/zero``, to itself), a FIFO that blocks whoever opens or reads it,
a device, or a file of gigabytes. The primitives here make every such case one line:

- writes never follow a link: a file is opened with ``O_NOFOLLOW`` (:func:`open_for_append`,
  :func:`write_atomic`), and a whole-file write goes through a temporary file created exclusively
  (``O_EXCL``) and renamed over the target, so nothing is ever written through a planted link;
- reads take regular files only, checked with ``fstat`` on the descriptor actually read, which
  is opened non-blocking (a FIFO cannot block the open) and, inside a run folder, without
  following links; each read is bounded in size (:func:`read_bytes`, :func:`read_json`);
- :func:`unsafe_entries` lists what a folder holds that chipbench must not follow or write
  through (links, FIFOs, devices, sockets), for a command that refuses such a folder up front.

Each refusal is a :class:`FileRefused` (a :class:`~chipbench.errors.UserError`) that names the
file and what it is.
"""

import contextlib
import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import IO, Any, Iterator, List, Optional, Sequence, Union

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None  # type: ignore[assignment]

from chipbench.errors import UserError
from chipbench.util.text import shorten

KiB, MiB, GiB = 2**10, 2**20, 2**30

RUN_JSON_LIMIT = 64 * MiB
"""The largest ``result.json``, ``progress.json`` or ``spec.json`` read from a run folder (a run
of a thousand epochs writes well under 1 MiB)."""
RUN_TEXT_LIMIT = 1 * MiB
"""The largest small text file read from a run folder (a rank's error line, a pid)."""
MONITOR_LIMIT = 256 * MiB
"""The largest ``monitor/rank<N>.jsonl`` read (a sample every 2 s for a week is about 100 MiB)."""
LOG_TAIL_LIMIT = 16 * MiB
"""How much of the end of a log is read to find why a run failed."""
CONFIG_LIMIT = 4 * MiB
"""The largest ``--config`` read, file or stream (a config is a few KiB)."""

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)

FIX = "give a regular file"
FIX_RUN_FOLDER = ("remove it or restore the run folder as `core run` wrote it: chipbench writes "
                  "and reads only plain files inside a run folder and follows no link there")

PathLike = Union[str, "os.PathLike[str]"]


class FileRefused(UserError):
    """A file chipbench will not read or write: not a regular file (a FIFO, a device, a folder,
    a symbolic link where links are not followed, a link that loops), or too large.
    ``path`` is the file, ``kind`` what it is (``a FIFO (named pipe)``, ``too large: ...``)."""

    def __init__(self, path: PathLike, kind: str, what: str = "file",
                 fix: Optional[str] = None) -> None:
        self.path = str(path)
        self.kind = kind
        super().__init__("{} {} is {}".format(what, shorten(self.path, 200), kind), fix or FIX)


def mode_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words: ``a regular file``, ``a folder``,
    ``a FIFO (named pipe)``, ``a character device``, ..."""
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "a special file"


def link_kind(path: PathLike) -> str:
    """What the symbolic link ``path`` is: ``a symbolic link to /dev/zero``, ``a symbolic link
    that loops``, ``a dangling symbolic link to /x`` (to nothing)."""
    try:
        target = shorten(os.readlink(str(path)), 120)
    except OSError:
        return "a symbolic link"
    try:
        os.stat(str(path))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link that loops"
        if exc.errno == errno.ENOENT:
            return "a dangling symbolic link to {}".format(target)
    return "a symbolic link to {}".format(target)


def kind_of(path: PathLike, follow: bool = True) -> Optional[str]:
    """What ``path`` is (:func:`mode_kind`, or :func:`link_kind` for a link not followed or one
    that loops); None where nothing is there. Other errors (permission, a name too long) raise."""
    try:
        mode = (os.stat if follow else os.lstat)(str(path)).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link that loops"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if follow and os.path.islink(str(path)):
                return link_kind(path)  # a dangling link
            return None
        raise
    return link_kind(path) if stat.S_ISLNK(mode) else mode_kind(mode)


DESCRIPTOR_PATH = re.compile(r"/dev/(?:fd/\d+|stdin)|/proc/(?:self|\d+)/fd/\d+")
"""A path that names one of the process's open descriptors (bash's ``<(...)`` gives /dev/fd/63)."""


def is_inherited_pipe(fd: int, path: PathLike) -> bool:
    """Whether ``fd``, opened from ``path``, is an anonymous pipe (``--config <(cat a.yaml)``, a
    shell pipe on ``/dev/stdin``), not a named FIFO in a folder."""
    try:
        return os.readlink("/proc/self/fd/{}".format(fd)).startswith("pipe:")
    except OSError:  # no /proc (macOS): a descriptor's path is the pipe's only name
        return bool(DESCRIPTOR_PATH.fullmatch(str(path)))


def open_fd(path: PathLike, flags: int = os.O_RDONLY, follow: bool = False,
            what: str = "file", fix: Optional[str] = None, pipes: bool = False,
            mode: int = 0o666) -> int:
    """``os.open(path, flags)`` of a regular file, or a :class:`FileRefused` naming what it is.

    Opened non-blocking (a FIFO does not block the open; blocking is restored before the
    descriptor is returned), close-on-exec, and without following a final symbolic link unless
    ``follow``. ``pipes``: an anonymous pipe (:func:`is_inherited_pipe`) is taken too. A missing
    file, a permission error and the like raise their ``OSError`` for the caller to word."""
    path = str(path)
    try:  # look before opening: opening a device can do things
        before = kind_of(path, follow)
    except OSError:
        before = None  # the open says why
    if before not in (None, "a regular file") and not (pipes and before == "a FIFO (named pipe)"):
        raise FileRefused(path, before, what, fix)
    try:
        fd = os.open(path, flags | NONBLOCK | CLOEXEC | (0 if follow else NOFOLLOW), mode)
    except OSError as exc:
        refused = _refusal(path, exc, follow, what, fix)
        if refused is not None:
            raise refused from None
        raise
    try:
        mode_now = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode_now) and not (
                pipes and stat.S_ISFIFO(mode_now) and is_inherited_pipe(fd, path)):
            raise FileRefused(path, mode_kind(mode_now), what, fix)
        if fcntl is not None and NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refusal(path: str, exc: OSError, follow: bool, what: str,
             fix: Optional[str]) -> Optional[FileRefused]:
    """The :class:`FileRefused` that an ``open`` error means, or None for other errors."""
    if exc.errno == errno.ELOOP:  # a link not followed (O_NOFOLLOW), or a loop of links
        return FileRefused(path, link_kind(path) if os.path.islink(path) else
                           "on a path whose symbolic links loop", what, fix)
    if exc.errno in (errno.EISDIR, errno.ENXIO, errno.ENODEV, errno.ETXTBSY):
        try:
            kind = kind_of(path, follow)
        except OSError:
            kind = None
        if kind is not None and kind != "a regular file":
            return FileRefused(path, kind, what, fix)
    return None


def too_large(path: PathLike, size: int, limit: int, what: str = "file",
              fix: Optional[str] = None) -> FileRefused:
    """The refusal of a file of ``size`` bytes (at least) over the bound ``limit``."""
    return FileRefused(path, "too large: {:,} bytes, over the bound of {:,} bytes ({})".format(
        size, limit, size_text(limit)), what, fix)


def size_text(size: int) -> str:
    """``4 MiB``, ``64 GiB``, ``512 KiB``, ``100 bytes``."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size >= unit:
            return "{:g} {}".format(round(size / unit, 1), name)
    return "{} bytes".format(size)


def open_for_read(path: PathLike, limit: int, follow: bool = False, what: str = "file",
                  fix: Optional[str] = None) -> IO[bytes]:
    """A binary reader of the regular file ``path`` (:func:`open_fd`) no larger than ``limit``
    bytes, for readers that take a file object (``torch.load``)."""
    fd = open_fd(path, os.O_RDONLY, follow, what, fix)
    handle = os.fdopen(fd, "rb")
    size = os.fstat(fd).st_size
    if size > limit:
        handle.close()
        raise too_large(path, size, limit, what, fix)
    return handle


def read_bytes(path: PathLike, limit: int, follow: bool = False, what: str = "file",
               fix: Optional[str] = None, pipes: bool = False) -> bytes:
    """The bytes of the regular file ``path`` (or, with ``pipes``, of an anonymous pipe, read to
    its end), refused where it holds more than ``limit`` bytes. See :func:`open_fd`."""
    fd = open_fd(path, os.O_RDONLY, follow, what, fix, pipes=pipes)
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(fd)
        if stat.S_ISREG(status.st_mode) and status.st_size > limit:
            raise too_large(path, status.st_size, limit, what, fix)
        data = handle.read(limit + 1)  # a file that grew since, or a stream
    if len(data) > limit:
        raise FileRefused(path, "too large: over the bound of {:,} bytes ({})".format(
            limit, size_text(limit)), what, fix)
    return data


def read_text(path: PathLike, limit: int, follow: bool = False, what: str = "file",
              fix: Optional[str] = None, errors: str = "strict") -> str:
    """:func:`read_bytes` decoded as UTF-8."""
    return read_bytes(path, limit, follow, what, fix).decode("utf-8", errors)


def read_json(path: PathLike, limit: int = RUN_JSON_LIMIT, follow: bool = False,
              what: str = "file", fix: Optional[str] = None) -> Any:
    """The JSON value in ``path`` (:func:`read_bytes`); ``ValueError`` where it is not JSON,
    ``RecursionError`` where it nests too deeply."""
    return json.loads(read_bytes(path, limit, follow, what, fix))


def read_tail(path: PathLike, offset: int = 0, limit: int = LOG_TAIL_LIMIT,
              what: str = "file") -> bytes:
    """The bytes of regular file ``path`` from ``offset`` on, at most its last ``limit`` bytes
    (a log is read for its end); no link is followed."""
    fd = open_fd(path, os.O_RDONLY, False, what)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(fd).st_size
        handle.seek(max(offset, size - limit, 0))
        return handle.read(limit)


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def open_for_append(path: PathLike, binary: bool = False, what: str = "file",
                    fix: Optional[str] = None, encoding: Optional[str] = None) -> IO[Any]:
    """``open(path, "a")`` that never follows a link: a regular file created or appended to,
    anything else (a link, a FIFO, a device, a folder) refused naming it."""
    fd = open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, False, what,
                 fix or FIX_RUN_FOLDER)
    if binary:
        return os.fdopen(fd, "ab")
    return os.fdopen(fd, "a", encoding=encoding or "utf-8")


def create_exclusive(path: PathLike, what: str = "file", fix: Optional[str] = None,
                     mode: int = 0o666) -> int:
    """A new file at ``path`` (``O_CREAT | O_EXCL``, no link followed) opened for writing.
    A plain file already there (a temporary file left by a crash) is removed first; anything
    else there (a link, a folder, a FIFO) is refused naming it."""
    path = str(path)
    for _ in range(3):
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, mode)
        except FileExistsError:
            kind = kind_of(path, follow=False)
            if kind not in (None, "a regular file"):
                raise FileRefused(path, kind, what, fix or FIX_RUN_FOLDER) from None
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    raise FileExistsError(errno.EEXIST, "it keeps reappearing", path)


def check_replaceable(path: PathLike, what: str = "file", fix: Optional[str] = None) -> None:
    """Refuse a ``path`` that a rename cannot replace: a folder (the error would otherwise name
    the temporary file). A link, a FIFO or a device there is replaced, never written through."""
    kind = kind_of(path, follow=False)
    if kind == "a folder":
        raise FileRefused(path, kind, what, fix or FIX_RUN_FOLDER)


@contextlib.contextmanager
def atomic_writer(path: PathLike, what: str = "file", fsync: bool = False,
                  fix: Optional[str] = None) -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` when the block ends without an error: written to
    ``<path>.tmp`` (:func:`create_exclusive`), optionally synced, then renamed over ``path``. On
    an error the temporary file is removed and ``path`` keeps what it held."""
    path = Path(path)
    check_replaceable(path, what, fix)
    tmp = path.with_name(path.name + ".tmp")
    fd = create_exclusive(tmp, what, fix)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(str(tmp), str(path))
    except BaseException:
        try:
            os.unlink(str(tmp))
        except OSError:
            pass
        raise


def write_atomic(path: PathLike, data: Union[bytes, str], what: str = "file",
                 fsync: bool = False, fix: Optional[str] = None) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` whole through :func:`atomic_writer`."""
    with atomic_writer(path, what, fsync, fix) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def ensure_folder(path: PathLike, what: str = "folder", fix: Optional[str] = None) -> Path:
    """``path`` made (with its parents) where missing, and checked to be a real folder, not a
    symbolic link to one: a run folder's ``logs/`` linked elsewhere would take every file
    written into it there, whatever ``O_NOFOLLOW`` does for the files' own names."""
    path = Path(path)
    if kind_of(path, follow=False) is None:
        path.mkdir(parents=True, exist_ok=True)  # another rank may make it at the same time
    kind = kind_of(path, follow=False)
    if kind != "a folder":
        raise FileRefused(path, kind or "missing", what, fix or FIX_RUN_FOLDER)
    return path


# --------------------------------------------------------------------------------------------------
# a folder as a whole
# --------------------------------------------------------------------------------------------------


def unsafe_entries(folder: PathLike, files: Sequence[str] = (), folders: Sequence[str] = (),
                   limit: int = 100000) -> List[str]:
    """What ``folder`` holds that chipbench must not follow or write through, as
    ``"<relative path> is <what it is>"``: every symbolic link, FIFO, device or socket under it
    (links are listed, not followed), each of ``files`` (relative paths) that is there but is no
    regular file, each of ``folders`` that is there but is no folder. At most ``limit`` entries
    are looked at."""
    root = Path(folder)
    found: List[str] = []
    for name in files:
        kind = kind_of(root / name, follow=False)
        if kind not in (None, "a regular file") and not kind.startswith("a symbolic link"):
            found.append("{} is {}".format(name, kind))
    for name in folders:
        kind = kind_of(root / name, follow=False)
        if kind not in (None, "a folder") and not kind.startswith("a symbolic link"):
            found.append("{} is {}".format(name, kind))
    seen = 0
    for current, dirs, names in os.walk(str(root)):  # never descends into a linked folder
        for name in sorted(dirs) + sorted(names):
            seen += 1
            full = os.path.join(current, name)
            try:
                mode = os.lstat(full).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                continue
            relative = os.path.relpath(full, str(root))
            kind = link_kind(full) if stat.S_ISLNK(mode) else mode_kind(mode)
            entry = "{} is {}".format(relative, kind)
            if entry not in found:
                found.append(entry)
        if seen > limit:
            break
    return found
