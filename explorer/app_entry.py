"""Start the window (kept apart from cli.py so the command line never imports Qt).

Before Qt is imported, check that a window can be shown at all: where none can, Qt's xcb plugin aborts the process
("could not load the Qt platform plugin", exit 134) with a page of text; we say in one line what is missing instead.
"""
from __future__ import annotations

import os
import sys
import threading

# What Qt 6's xcb platform plugin (libqxcb.so and libQt6XcbQpa) loads: soname -> Debian/Ubuntu package.
XCB_LIBRARIES = {
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libdbus-1.so.3": "libdbus-1-3",
}
WITHOUT_A_DISPLAY = ("--screenshot OUT.png and every command (python main.py inspect|simulate|stats|diff|demo) "
                     "work without one")


def missing_xcb_packages() -> list[str]:
    """The packages of the libraries Qt's xcb plugin needs that the dynamic loader cannot load."""
    import ctypes
    missing = []
    for soname, package in XCB_LIBRARIES.items():
        try:
            ctypes.CDLL(soname)
        except OSError:
            missing.append(package)
    return missing


def _x_server_answers(timeout_s: float = 5.0) -> bool | None:
    """Does the X server named by DISPLAY accept a connection? None: could not tell (Qt will say)."""
    import ctypes
    try:
        xcb = ctypes.CDLL("libxcb.so.1")
        xcb.xcb_connect.restype = ctypes.c_void_p
        xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
        xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    answer: list[bool] = []

    def connect():
        conn = xcb.xcb_connect(None, None)
        answer.append(bool(conn) and xcb.xcb_connection_has_error(conn) == 0)
        if conn:
            xcb.xcb_disconnect(conn)
    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(timeout_s)
    return answer[0] if answer else None


def display_problem(env=None) -> str | None:
    """Why no window can be shown here (one clause), or None when one can (or we cannot tell: Qt then decides).

    Only where Qt uses X11/Wayland; a platform chosen with QT_QPA_PLATFORM (offscreen, wayland, vnc...) is trusted,
    except xcb, which is checked like the default."""
    env = os.environ if env is None else env
    if not sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return None
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform and not platform.startswith("xcb"):
        return None
    if env.get("WAYLAND_DISPLAY") and not platform:
        return None
    if not env.get("DISPLAY"):
        return "DISPLAY is not set" + ("" if platform else " (nor WAYLAND_DISPLAY)")
    missing = missing_xcb_packages()
    if missing:
        return (f"Qt's xcb plugin cannot load its libraries; on Debian/Ubuntu: sudo apt install {' '.join(missing)}")
    if _x_server_answers() is False:
        return f"no X server answers at DISPLAY={env.get('DISPLAY')!r}"
    return None


def _install_hint() -> str:
    missing = missing_xcb_packages()
    needs = (f"Qt's xcb plugin also needs libraries not installed here (on Debian/Ubuntu: sudo apt install "
             f"{' '.join(missing)})" if missing else "Qt's xcb libraries are installed")
    return f"the window needs an X11 or Wayland desktop session; {needs}"


def run_app(argv: list[str]) -> int:
    from .window_args import build_parser
    args = build_parser().parse_args(argv)   # --help and bad options answer here, before any check or Qt
    problem = display_problem()
    if problem is not None:
        if args.screenshot:
            # a screenshot needs no screen: render offscreen (what explorer.qt.app does when DISPLAY is unset)
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
        else:
            hint = "" if "apt install" in problem else "; " + _install_hint()
            print(f"error: no display could be opened: {problem}{hint}; {WITHOUT_A_DISPLAY}", file=sys.stderr)
            return 2
    try:
        from .qt.app import main as qt_main
    except ImportError as e:
        print(f"error: the window needs PySide6 and pyqtgraph ({e}); install with: pip install -e .", file=sys.stderr)
        return 2
    return qt_main(argv)
