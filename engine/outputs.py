"""Output paths: which ones ardiff may write (checked before any work) and committing a run's outputs together.

Rules every writer shares:
- never the input: an output that is the input (same resolved path or same inode), or a folder output that
  holds the input, is refused;
- a name longer than the file system allows, an unwritable folder, an existing folder where a file goes are
  refused up front, with one line, before minutes of sampling;
- all outputs of one run (a video and its contact sheet) are staged under temp names, then renamed in one
  go; if a rename fails (or a signal arrives), the ones already renamed are rolled back, so they appear
  together or not at all. SIGINT/SIGTERM are held during the renames and delivered after, and the folders
  are locked (flock) meanwhile, so two concurrent runs never pair one's video with the other's sheet.
  An existing file is replaced by one atomic rename (its hard-linked backup serves the rollback).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from engine.atomic import NAME_MAX, remove_path, temp_name
from engine.errors import OutputError


def describe_special(path: str | os.PathLike) -> str | None:
    """What a path is when it is not a regular file or folder ("a FIFO (named pipe)", "a symlink loop",
    ...), or None for a regular file, a folder or a missing path. For messages that must say what is wrong."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop"
        return None
    for test, words in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return None


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file: equal once resolved (`./sub/../c.mp4`, symlinks) or one inode
    (hard links, bind mounts)."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return os.path.samefile(a, b)
    except (OSError, RuntimeError):
        return False


def _inside(child: Path, folder: Path) -> bool:
    try:
        child.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def check_not_input(output: str | os.PathLike, inputs: Sequence[str | os.PathLike], flag: str = "-o") -> None:
    """Refuse an output that is one of the inputs, or a folder that holds one (it would be replaced)."""
    out = Path(output)
    for given in inputs:
        if given is None:
            continue
        if same_path(out, given):
            raise OutputError(f"{flag} {out} is the input {given}; ardiff never overwrites its input: "
                              f"choose another output")
        if out.is_dir() and _inside(Path(given), out):
            raise OutputError(f"{flag} {out} is a folder holding the input {given}; ardiff never replaces "
                              f"its input: choose another output")
        if Path(given).is_dir() and _inside(out, Path(given)):
            raise OutputError(f"{flag} {out} is inside the input folder {given}; a file written there would "
                              f"change the input (a frame folder reads every image in it): choose another output")


def check_name(path: str | os.PathLike) -> None:
    """Refuse a file name longer than the file system allows (255 bytes), before any work."""
    name = Path(path).name
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise OutputError(f"{path}: file name is {len(name.encode('utf-8', 'surrogateescape'))} bytes; file "
                          f"systems allow at most {NAME_MAX}")


def check_writable_parent(path: str | os.PathLike) -> None:
    """Refuse an output whose folder (or nearest existing ancestor, created on write) cannot be written: a
    read-only mount, a folder of another user, a file where a folder should be."""
    parent = Path(path).absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot create it, {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _read_only(parent) else "is not writable"
        raise OutputError(f"{path}: cannot write there, {parent} {why}")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output_file(path: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (), flag: str = "-o") -> None:
    """The checks for one output file: a name that fits, not an existing folder, not an input, writable."""
    path = Path(path)
    check_name(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is an existing folder; give a file name (or remove the folder)")
    special = describe_special(path)
    if special:
        raise OutputError(f"{flag} {path} is {special}; give a regular file name")
    check_not_input(path, inputs, flag)
    check_writable_parent(path)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the duration (renames that must not be cut in half), then deliver them.

    Python handlers run only in the main thread, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.getsignal(sig)
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            os.kill(os.getpid(), sig)  # now delivered to the restored handler


class OutputSet:
    """The outputs of one run: stage each under a temp name (`add`), then `commit` them all or none.

    Use as a context manager: leaving it without a commit (an error, Ctrl-C) removes every staged file.
    `written` (optional) is extended with the targets once they are all in place, before held signals are
    delivered, so an interrupt handler can say truthfully what was written."""

    def __init__(self, written: list[Path] | None = None) -> None:
        self.staged: list[tuple[Path, Path, Callable[[Path], bool] | None]] = []
        self.written = written if written is not None else []
        self.committed = False

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.discard()

    def add(self, tmp: Path, target: str | os.PathLike, may_replace: Callable[[Path], bool] | None = None) -> None:
        """Stage a finished temp file or folder for `target`; a non-empty existing folder at `target` is
        replaced only when `may_replace` accepts it."""
        self.staged.append((Path(tmp), Path(target), may_replace))

    def discard(self) -> None:
        for tmp, _, _ in self.staged:
            remove_path(tmp)

    def commit(self) -> list[Path]:
        """Rename every staged output into place; on any failure restore what was there before."""
        done: list[tuple[Path, Path | None]] = []  # (target now holding the new output, backup of the old)
        with signals_held(), _folders_locked(sorted({t.parent for _, t, _ in self.staged})):
            try:
                for tmp, target, may_replace in self.staged:
                    if target.is_dir() and not target.is_symlink() and any(target.iterdir()) and not (
                            may_replace and may_replace(target)):
                        raise OutputError(f"{target} is a folder holding other files; not replacing it")
                    backup = None
                    if target.exists() or target.is_symlink():
                        backup = temp_name(target)
                        _keep_aside(target, backup)
                    try:
                        os.replace(tmp, target)
                    except BaseException:
                        if backup is not None:
                            os.replace(backup, target) if not target.is_dir() else os.rename(backup, target)
                        raise
                    done.append((target, backup))
            except BaseException:
                for target, backup in reversed(done):
                    if backup is not None and not target.is_dir():
                        os.replace(backup, target)  # one rename: the old file is back, never missing
                        continue
                    remove_path(target)
                    if backup is not None:
                        os.rename(backup, target)
                raise
            for _, backup in done:
                if backup is not None:
                    remove_path(backup)
            self.committed = True
            self.written.extend(target for target, _ in done)
        return [target for target, _ in done]


def _keep_aside(target: Path, backup: Path) -> None:
    """Keep the old output under `backup` for a rollback. A file is hard-linked, so the new one replaces it
    with one atomic rename and the name never goes missing; a folder (or a file system without hard links)
    is renamed away."""
    if not target.is_dir() or target.is_symlink():
        try:
            os.link(target, backup, follow_symlinks=False)
            return
        except OSError:
            pass
    os.rename(target, backup)


@contextmanager
def _folders_locked(folders: Sequence[Path]) -> Iterator[None]:
    """An exclusive flock on each folder (in a fixed order: no deadlock) while a run's outputs are renamed in.
    Advisory and best effort: a file system without flock just goes unlocked."""
    fds = []
    try:
        for folder in folders:
            try:
                fd = os.open(folder, os.O_RDONLY)
            except OSError:
                continue
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass
        yield
    finally:
        for fd in fds:
            os.close(fd)  # closing releases the lock
