"""`ardiff-gui`: start the desktop app, or render its window to a PNG (`--screenshot`) and exit.

    ardiff-gui [CLIP]                                  open the window (with a clip)
    ardiff-gui --screenshot out.png [CLIP]             the window as a person would see it, then exit
    ardiff-gui --screenshot out.png --checkpoint M --mid-generation CLIP   ... caught while sampling

Screenshots need no display: without one, Qt's offscreen platform renders the window. They start from
default settings (the saved ones are neither read nor changed) so the picture is reproducible.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.run import DEVICES, PRECISION_HELP, PRECISIONS, RunRequest

SCREENSHOT_SIZE = (1280, 800)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; --device and --precision, when given, override the saved settings."""
    p = argparse.ArgumentParser(prog="ardiff-gui", description="Continue a video with AR-Diffusion.")
    p.add_argument("clip", nargs="?", help="a video file, an image (a one-frame clip) or a frame folder to open")
    p.add_argument("--checkpoint", help="model checkpoint: a .safetensors file, hf:OWNER/REPO[/FILE][@REV] or "
                                        "https://URL; default: the embedded model")
    p.add_argument("--device", choices=DEVICES, help="where the model runs")
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: the saved setting, else the cores other work leaves "
                        "free, less one for the window; also ARDIFF_THREADS)")
    p.add_argument("--screenshot", metavar="PATH", help="render the window to a PNG and exit")
    p.add_argument("--mid-generation", action="store_true",
                   help="with --screenshot: press Generate and take the picture when half the frames are in")
    p.add_argument("--frames", type=int, default=RunRequest.new_frames,
                   help=f"with --mid-generation: new frames (default {RunRequest.new_frames})")
    p.add_argument("--takes", type=int, default=0, metavar="N",
                   help="with --mid-generation: make N whole takes first (seeds 1..N), so the takes list shows them")
    return p.parse_args(argv)


def _needs_offscreen() -> bool:
    if os.environ.get("QT_QPA_PLATFORM"):
        return False
    if sys.platform.startswith("linux"):
        return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return False


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Run the Qt event loop until `predicate()` holds or `timeout` seconds pass; True if it held."""
    from PySide6.QtCore import QCoreApplication, QEventLoop

    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        time.sleep(0.005)
    return True


def take_screenshot(window, path: str | os.PathLike) -> Path:
    """Lay the window out at a fixed size and save what it shows as a PNG."""
    from PySide6.QtCore import QCoreApplication

    window.resize(*SCREENSHOT_SIZE)
    window.show()
    for _ in range(5):  # layouts settle over a few passes
        QCoreApplication.processEvents()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(path), "PNG"):
        raise OSError(f"{path}: cannot write the PNG")
    return path


def screenshot(args: argparse.Namespace) -> int:
    """The --screenshot mode: returns 0, or 2 when the clip or model could not be opened (still writes)."""
    from app_gui.settings import Settings
    from app_gui.window import MainWindow

    window = MainWindow(Settings(), checkpoint=args.checkpoint, device=args.device, persist=False,
                        precision=args.precision)
    window.ask_unsaved = False  # nobody is there to answer: the picture's take is dropped on exit
    wait_for(lambda: not window.loading_model, 120)
    status = 0 if window.pipeline is not None or args.checkpoint is None else 2
    if args.clip:
        errors = len(window.errors)
        window.open_clip(args.clip)
        wait_for(lambda: window.clip is not None or len(window.errors) > errors, 120)
        if window.clip is None:
            status = 2
    if args.mid_generation:
        window.params.new_frames.setValue(max(2, args.frames))
        window.resize(*SCREENSHOT_SIZE)
        window.show()
        for seed in range(1, max(0, args.takes) + 1):
            window.params.seed.setValue(seed)
            if window.generate():
                wait_for(lambda: not window.is_generating(), 600)
        window.params.seed.setValue(RunRequest.seed)
        if window.generate():
            half = window.filmstrip.num_context + args.frames // 2
            wait_for(lambda: window.filmstrip.num_filled >= half or not window.is_generating(), 300)
            path = take_screenshot(window, args.screenshot)
            window.cancel()
            wait_for(lambda: not window.is_generating(), 60)
        else:
            status, path = 2, take_screenshot(window, args.screenshot)
    else:
        path = take_screenshot(window, args.screenshot)
    for title, message in window.errors:
        print(f"ardiff-gui: {title}: {message}", file=sys.stderr)
    print(f"wrote {path}")
    window.close()
    return status


def _install_excepthook(app) -> None:
    """An unexpected exception in a slot becomes a dialog in the active window, not a crash."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        traceback.print_exception(kind, value, tb)
        from app_gui.window import MainWindow

        window = next((w for w in app.topLevelWidgets() if isinstance(w, MainWindow)), None)
        if window is None or issubclass(kind, (KeyboardInterrupt, SystemExit)):
            previous(kind, value, tb)
            return
        window.show_error("Unexpected error", f"{kind.__name__}: {value}\n(details are in the terminal)")

    sys.excepthook = hook


def configure_gui_threads(args: argparse.Namespace) -> None:
    """--threads, else ARDIFF_THREADS, else the saved setting (not for screenshots, which use default
    settings), else the policy with a core kept for the window (engine.threads); a bad count: ValueError."""
    from engine.threads import ENV_THREADS, configure_threads

    if args.threads is not None:
        configure_threads(args.threads, reserve=1)
        return
    saved = 0
    if not args.screenshot and not os.environ.get(ENV_THREADS):
        from app_gui.settings import Settings

        saved = Settings.load().threads
    configure_threads(saved or None, reserve=1, flag="the threads setting")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # torch loads with the model, on a worker thread; the threads it gets are settled here
        configure_gui_threads(args)
    except ValueError as err:
        print(f"ardiff-gui: error: {err}", file=sys.stderr)
        return 2
    if args.screenshot and _needs_offscreen():
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    try:
        from PySide6.QtWidgets import QApplication
    except ImportError:
        print("ardiff-gui needs PySide6: pip install 'ardiff[gui]'", file=sys.stderr)
        return 2
    from app_gui import xcb_check

    problem = xcb_check.xcb_problem() if xcb_check.uses_xcb() else None
    if problem:  # Qt would abort blaming the wrong library: name the missing ones before it starts
        print(f"ardiff-gui: {problem}", file=sys.stderr)
        return 2

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("ardiff")
    app.setApplicationDisplayName("ardiff")
    from app_gui.gc_guard import MainThreadGC

    gc_guard = MainThreadGC(parent=app).start()  # worker threads must never destroy Qt objects
    app.aboutToQuit.connect(gc_guard.stop)
    if args.screenshot:
        try:
            return screenshot(args)
        except OSError as err:
            print(f"ardiff-gui: {err}", file=sys.stderr)
            return 2

    from app_gui.window import MainWindow

    _install_excepthook(app)
    window = MainWindow(checkpoint=args.checkpoint, device=args.device, precision=args.precision)
    window.show()
    if args.clip:
        window.open_path(args.clip)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
