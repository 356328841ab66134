"""Before Qt starts on Linux's X11 (xcb) platform: name the system libraries its xcb plugin needs that are
missing, and the packages that bring them.

Qt's own message blames libxcb-cursor0 whatever is missing and then aborts; this check loads each library
the plugin links (the list below: `ldd libqxcb.so` on PySide6 6.x) and names exactly the absent ones.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class XcbLibrary:
    """A shared library the xcb plugin links, and the package that installs it on each family of distros."""

    soname: str
    debian: str  # Debian / Ubuntu (apt)
    fedora: str  # Fedora / RHEL (dnf)


LIBRARIES = (
    XcbLibrary("libxcb-cursor.so.0", "libxcb-cursor0", "xcb-util-cursor"),
    XcbLibrary("libxcb-icccm.so.4", "libxcb-icccm4", "xcb-util-wm"),
    XcbLibrary("libxcb-keysyms.so.1", "libxcb-keysyms1", "xcb-util-keysyms"),
    XcbLibrary("libxcb-image.so.0", "libxcb-image0", "xcb-util-image"),
    XcbLibrary("libxcb-render-util.so.0", "libxcb-render-util0", "xcb-util-renderutil"),
    XcbLibrary("libxcb-util.so.1", "libxcb-util1", "xcb-util"),
    XcbLibrary("libxkbcommon-x11.so.0", "libxkbcommon-x11-0", "libxkbcommon-x11"),
    XcbLibrary("libxkbcommon.so.0", "libxkbcommon0", "libxkbcommon"),
    XcbLibrary("libxcb-randr.so.0", "libxcb-randr0", "libxcb"),
    XcbLibrary("libxcb-shape.so.0", "libxcb-shape0", "libxcb"),
    XcbLibrary("libxcb-xkb.so.1", "libxcb-xkb1", "libxcb"),
    XcbLibrary("libxcb-xfixes.so.0", "libxcb-xfixes0", "libxcb"),
    XcbLibrary("libxcb-sync.so.1", "libxcb-sync1", "libxcb"),
    XcbLibrary("libxcb-shm.so.0", "libxcb-shm0", "libxcb"),
    XcbLibrary("libxcb-render.so.0", "libxcb-render0", "libxcb"),
    XcbLibrary("libX11-xcb.so.1", "libx11-xcb1", "libX11-xcb"),
)


def loadable(soname: str) -> bool:
    """Whether the dynamic loader finds and loads `soname` (what Qt's plugin loader will need)."""
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def uses_xcb(environ: dict | None = None, platform: str | None = None) -> bool:
    """Whether Qt will pick its xcb plugin: Linux, no other platform forced, an X display and no Wayland
    session (Qt 6 prefers Wayland there)."""
    env = os.environ if environ is None else environ
    if not (platform or sys.platform).startswith("linux"):
        return False
    forced = env.get("QT_QPA_PLATFORM", "")
    if forced:
        return forced.split(":")[0].split(";")[0] == "xcb"
    wayland = env.get("WAYLAND_DISPLAY") or env.get("XDG_SESSION_TYPE") == "wayland"
    return bool(env.get("DISPLAY")) and not wayland


def missing_libraries(probe: Callable[[str], bool] | None = None) -> list[XcbLibrary]:
    """The libraries of LIBRARIES that `probe` (default: `loadable`) cannot load."""
    probe = loadable if probe is None else probe
    return [lib for lib in LIBRARIES if not probe(lib.soname)]


def xcb_problem(probe: Callable[[str], bool] | None = None) -> str | None:
    """One line naming what is missing and how to install it, or None when everything loads."""
    missing = missing_libraries(probe)
    if not missing:
        return None
    names = ", ".join(lib.soname for lib in missing)
    apt = " ".join(dict.fromkeys(lib.debian for lib in missing))
    dnf = " ".join(dict.fromkeys(lib.fedora for lib in missing))
    return (f"Qt's X11 (xcb) platform needs {names}, not found on this system; install them with "
            f"'sudo apt install {apt}' (Debian/Ubuntu) or 'sudo dnf install {dnf}' (Fedora)")
