"""Finding the app's resources (style sheets, icons) with one lookup function, in a checkout or when installed."""
from __future__ import annotations

import os
from pathlib import Path

_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "resources",      # a checkout: <repo>/resources
    Path(__file__).resolve().parent / "resources",          # packaged next to this module
)


def resource_dir() -> Path | None:
    env = os.environ.get("STATE_DICT_EXPLORER_RESOURCES")
    for path in ((Path(env),) if env else ()) + _CANDIDATES:
        if path.is_dir():
            return path
    return None


def resource_path(name: str) -> Path:
    """A named resource; fails with the list of known names."""
    base = resource_dir()
    if base is not None and (base / name).exists():
        return base / name
    known = sorted(p.name for p in base.iterdir()) if base is not None else []
    raise FileNotFoundError(f"no resource {name!r}; known: {', '.join(known) or '(no resources folder)'}")


def style_sheet() -> str:
    """All ``*.qss`` files of the resources folder, joined in name order."""
    base = resource_dir()
    if base is None:
        return ""
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(base.glob("*.qss")))


def apply_style(app) -> None:
    from PySide6.QtGui import QIcon
    app.setStyle("Fusion")
    qss = style_sheet()
    if qss:
        app.setStyleSheet(qss)
    try:
        app.setWindowIcon(QIcon(str(resource_path("icon.png"))))
    except FileNotFoundError:
        pass
