"""What every command-line entry point does with failures and signals, written once.

Expected failures (bad input, OSError such as a full disk or a read-only mount, MemoryError) end as one line
on stderr and exit 2. SIGTERM is turned into an exception like Ctrl-C, so the writers' cleanup runs (temp files
removed) and the message says truthfully what was written: exit 130 for SIGINT, 143 for SIGTERM (128 + the
signal, as shells report them).
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import ArdiffError, one_line

EXIT_USAGE = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so `finally` blocks and temp-file cleanup run as for Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises `Terminated` (main thread only; elsewhere Python cannot catch it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def describe_os_error(err: OSError) -> str:
    """An OSError as one line that names the file: 'out/x.mp4: No space left on device'."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno == errno.EROFS:
        reason = "read-only file system"
    where = err.filename if err.filename is not None else ""
    return f"{where}: {reason}" if where else reason


def run_entry(prog: str, body: Callable[[], int], written: list[Path],
              expected: tuple[type[Exception], ...] = (ArdiffError,),
              describe: Callable[[Exception], str] = one_line,
              memory_hint: str = "ask for fewer frames or a smaller model",
              interrupt_note: str | None = None) -> int:
    """Run a command's body; every expected failure (`expected` worded by `describe`, OSError, MemoryError
    with `memory_hint`) becomes one line on stderr and exit 2, an interrupt says what was written (`written`
    is filled by the outputs' commit; `interrupt_note` says it instead where the command keeps its own
    record, as the trainer's checkpoints) and exits 130/143."""
    try:
        with sigterm_raises():
            return int(body() or 0)
    except expected as err:
        print(f"{prog}: error: {describe(err)}", file=sys.stderr)
    except MemoryError:
        print(f"{prog}: error: out of memory; {memory_hint}", file=sys.stderr)
    except OSError as err:
        print(f"{prog}: error: {' '.join(describe_os_error(err).split())}", file=sys.stderr)
    except KeyboardInterrupt as err:
        what = "terminated" if isinstance(err, Terminated) else "interrupted"
        done = interrupt_note or (f"wrote {' and '.join(str(p) for p in written)} before that" if written
                                  else "nothing was written")
        print(f"{prog}: {what}; {done}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT)
    return EXIT_USAGE
