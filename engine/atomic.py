"""Atomic file writes: write beside the target, then rename, so a crash never leaves half a file.

Every temporary name ardiff makes comes from `temp_name`: `.ardiff-PID-TOKEN.HINT.tmpSUFFIX` beside the
target, at most 255 bytes however long the target's name is (only the hint is shortened, never the user's
name). The fixed prefix lets `sweep_stale` recognise the leftovers of a killed run and remove them on the next
write into that folder. An existing folder is replaced only when it is empty or the caller says it may be
(a previous output of the same kind): a folder holding anything else is never deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.errors import OutputError

NAME_MAX = 255  # bytes in one file name on ext4, xfs, btrfs, APFS, NTFS (UTF-16 units there)
_PREFIX = ".ardiff-"
_TEMP_RE = re.compile(r"\.ardiff-(\d+)-[0-9a-f]{8}\.")
_MAX_SUFFIX = 16  # longer "suffixes" are part of a name, not an extension: left out of temp names
_STARTED = time.time()  # a temp file older than this process and of a dead pid is a leftover


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _trim_utf8(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, never inside a character."""
    return text.encode("utf-8", "surrogateescape")[:max(limit, 0)].decode("utf-8", "ignore")


def temp_name(target: str | os.PathLike) -> Path:
    """A fresh temporary path beside `target` (same file system, so the final rename is atomic).

    The target's suffix stays last (tools that look at extensions see the right one); the target's stem is
    kept as a hint for a person who finds the file, shortened so the whole name fits in NAME_MAX bytes."""
    target = Path(target)
    suffix = target.suffix if len(target.suffix.encode("utf-8", "surrogateescape")) <= _MAX_SUFFIX else ""
    head = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}."
    tail = f".tmp{suffix}"
    room = NAME_MAX - len(head.encode()) - len(tail.encode("utf-8", "surrogateescape"))
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    return target.parent / f"{head}{_trim_utf8(stem, room)}{tail}"


def is_temp_name(name: str) -> bool:
    """Whether `name` is one of ardiff's temporary names (`temp_name`)."""
    return _TEMP_RE.match(name) is not None and ".tmp" in name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process
    return True


def sweep_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove ardiff temp files in `folder` left by a killed run: our name pattern, a pid that is no longer
    running, and older than this process (so a concurrent run's files are never touched). Returns them."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None or ".tmp" not in entry.name:
            continue
        pid = int(match.group(1))
        try:
            if pid == os.getpid() or _pid_alive(pid) or entry.stat(follow_symlinks=False).st_mtime >= _STARTED:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue  # not ours to fight over: a read-only folder, a race with another sweeper
    return removed


def remove_path(path: Path) -> None:
    """Remove a file or folder tree we made; missing is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def check_folder_target(target: Path, may_replace: Callable[[Path], bool] | None = None) -> None:
    """Refuse, before any work, a folder target that exists and must not be replaced: a file, or a folder
    holding anything when `may_replace` does not accept it (an empty folder is always fine)."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise OutputError(f"{target} exists and is not a folder; not replacing it")
    if target.is_dir() and any(target.iterdir()) and not (may_replace and may_replace(target)):
        raise OutputError(f"{target} is a folder holding other files; not replacing it (choose a new or "
                          f"empty folder)")


def replace_folder(tmp: Path, target: Path, may_replace: Callable[[Path], bool] | None = None) -> None:
    """Move the finished folder `tmp` to `target`. A non-empty `target` is swapped out (renamed away, the new
    one renamed in, the old one removed) only when `may_replace` accepts it; otherwise OutputError."""
    check_folder_target(target, may_replace)
    if not target.exists():
        os.rename(tmp, target)
        return
    old = temp_name(target)
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False,
                may_replace: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces `path`, on error it vanishes.

    With `directory`, an existing non-empty folder at `path` is replaced only when `may_replace(path)` says
    so (checked before the caller does any work, and again at the rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        check_folder_target(target, may_replace)
    sweep_stale(target.parent)
    tmp = temp_name(target)
    if directory:
        tmp.mkdir(mode=0o700)
    else:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        yield tmp
        # temp files are made 0600/0700, and some writers (safetensors' save_file) replace the file with a
        # 0600 one of their own: give the result what open()/mkdir() would (checkpoints are shared).
        tmp.chmod((0o777 if directory else 0o666) & ~_umask())
        if directory:
            replace_folder(tmp, target, may_replace)
        else:
            os.replace(tmp, target)
    except BaseException:
        remove_path(tmp)
        raise
