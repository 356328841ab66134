"""One run directory, one trainer: the lock file `trainer.lock` in the run dir, and the claim on a new run dir.

Two trainers writing one run dir would interleave their checkpoints and metrics, so `RunDirLock` holds an
exclusive `flock` on `RUN_DIR/trainer.lock` for the whole run and writes the owner (pid, host, start time)
into it for the message a second trainer gets. The kernel drops a `flock` when its owner dies (even by
SIGKILL), so a lock file whose lock nobody holds is stale: it is taken over with a one-line warning naming
the pid that left it. Where `flock` is not available (no `fcntl`, or a file system without locks) the owner's
pid decides: alive on this host means held, dead means stale.

The lock is released (the file removed) on every way out of the `with` block: return, exception, and the
KeyboardInterrupt / SystemExit that SIGINT and SIGTERM become. A run dir the claim itself created is removed
again when the run fails before `keep()` is called (a rejected config leaves nothing behind, as `git clone`
removes the folder of a failed clone); one that existed is never removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: the pid in the file decides
    fcntl = None  # type: ignore[assignment]

from engine.errors import ArdiffError

LOCK_NAME = "trainer.lock"


class RunDirLockedError(ArdiffError):
    """Another live trainer holds the run directory."""


class StaleLockWarning(UserWarning):
    """A lock left by a trainer that is gone was taken over."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22; the name in parentheses may hold spaces


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _describe(owner: dict | None) -> str:
    if not owner:
        return "another trainer"
    return f"pid {owner.get('pid')} on {owner.get('host')} (since {owner.get('since')})"


def _read_owner(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def owner_alive(owner: dict | None) -> bool:
    """Whether the process a lock file names still runs (True when that cannot be told: another host)."""
    if not owner or not isinstance(owner.get("pid"), int):
        return False
    if owner.get("host") != socket.gethostname():
        return True  # cannot see another machine's processes: assume it runs
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return False
    start = _start_time(pid)
    return not (owner.get("start") and start and start != owner["start"])  # a reused pid is not the owner


class RunDirLock:
    """Hold `run_dir/trainer.lock` for one trainer; `enabled=False` (DDP ranks other than 0) does nothing.

    Raises RunDirLockedError (one line naming the owner's pid and host) when a live trainer holds it."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.enabled = enabled
        self.created: list[Path] = []  # folders this claim made, innermost first (a failed setup removes them)
        self.kept = False
        self._fd: int | None = None

    def keep(self) -> None:
        """The run has started writing results: from here on the run dir stays, whatever happens."""
        self.kept = True

    def acquire(self) -> None:
        if not self.enabled:
            return
        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        try:
            for folder in reversed(missing):  # outermost first; only what this call itself made counts as ours
                try:
                    folder.mkdir()
                except FileExistsError:  # made meanwhile by someone else (another trainer, maybe): not ours
                    continue
                self.created.insert(0, folder)
            self.run_dir.mkdir(parents=True, exist_ok=True)  # a dangling symlink or a file here: its OSError
            for _ in range(100):  # retried only while another trainer releases at the same instant
                if self._try_once():
                    return
        except RunDirLockedError:
            self.created = []  # another trainer is in there now: never remove anything
            raise
        except BaseException:
            self._forget_dir()
            raise
        self.created = []
        raise RunDirLockedError(f"{self.run_dir} is locked by {_describe(_read_owner(self.path))} (its lock "
                                f"file {self.path} keeps changing)")

    def _try_once(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not self._lock_fd(fd):
                owner = _read_owner(self.path)
                raise RunDirLockedError(f"{self.run_dir} is in use by the trainer {_describe(owner)}; one run "
                                        f"directory takes one trainer (wait for it, stop it, or choose another "
                                        f"--run-dir)")
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the owner removed the file between our open and our lock: lock the new one
                os.close(fd)
                return False
            previous = _read_owner(self.path)
            if previous:
                warnings.warn(f"{self.path}: took over the stale lock of {_describe(previous)}, a trainer that "
                              f"is no longer running", StaleLockWarning, stacklevel=3)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_owner()).encode(), 0)
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        self._fd = fd
        return True

    def _lock_fd(self, fd: int) -> bool:
        """Take the flock; False when someone else holds it. Without flock: the owner's pid decides."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        owner = _read_owner(self.path)
        return not (owner and owner.get("pid") != os.getpid() and owner_alive(owner))

    def release(self) -> None:
        if self._fd is None:
            self._forget_dir()
            return
        # remove the file before dropping the flock: a trainer that opened it meanwhile sees another inode
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
        self._forget_dir()

    def _forget_dir(self) -> None:
        """Remove the run dir (and the empty parents) this claim created, unless the run got going."""
        if self.created and not self.kept:
            if self.created[0] == self.run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            for parent in self.created:
                with contextlib.suppress(OSError):
                    parent.rmdir()  # only while empty: never what another process put there meanwhile
        self.created = []

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()




def claim_run_dir(run_dir: str | os.PathLike, rank: int, world: int, device=None) -> RunDirLock:
    """Rank 0 takes the run dir's lock (it alone writes there); under DDP every rank learns whether it did, so
    a refused rank 0 does not leave the others waiting in a collective. Call `.release()` when done."""
    claim = RunDirLock(run_dir, enabled=rank == 0)
    failure: BaseException | None = None
    try:
        claim.acquire()
    except ArdiffError as err:
        failure = err
    if world > 1:
        import torch
        import torch.distributed as dist

        ok = torch.tensor([0.0 if failure is not None else 1.0], device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if failure is None and ok.item() < 1:
            raise RunDirLockedError(f"rank 0 could not lock the run directory {run_dir}")
    if failure is not None:
        raise failure
    return claim
