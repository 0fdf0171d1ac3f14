"""How statuses and kinds look: colour *and* a glyph and a word, so they read in any theme and without colour."""
from __future__ import annotations

from functools import lru_cache

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QIcon, QPainter, QPixmap

from ..session import compare as C

# status -> (short text, glyph, colour). Colours are from the Okabe-Ito palette (safe for colour-blind readers);
# the glyph and the word carry the meaning on their own.
STATUS_STYLE = {
    C.MATCHED: ("matched", "✓", "#009E73"),
    C.IDENTICAL: ("identical", "=", "#009E73"),
    C.SAME_LAYOUT: ("same shape", "·", "#7f8c8d"),
    C.CHANGED: ("changed", "Δ", "#0072B2"),
    C.MISSING: ("missing", "✗", "#D55E00"),
    C.ONLY_A: ("only left", "◀", "#D55E00"),
    C.UNEXPECTED: ("unexpected", "+", "#CC79A7"),
    C.ONLY_B: ("only right", "▶", "#CC79A7"),
    C.SHAPE_MISMATCH: ("shape mismatch", "≠", "#C0392B"),
    C.SHAPE_DIFFERS: ("shape differs", "≠", "#C0392B"),
    C.DTYPE_CAST: ("dtype cast", "~", "#E69F00"),
    C.DTYPE_DIFFERS: ("dtype differs", "~", "#E69F00"),
    C.NONFINITE: ("NaN/Inf changed", "⚠", "#C0392B"),
    C.RUNNING_STAT: ("running stat overwritten", "⟳", "#8E44AD"),
    C.NOT_LOADED: ("not loaded", "–", "#7f8c8d"),
    C.NOT_COMPARED: ("values not read", "?", "#7f8c8d"),
    C.UNCOMPARED: ("loads, not compared", "?", "#5D6D7E"),
}

KIND_STYLE = {  # kind -> (text, letter, colour)
    "parameter": ("parameter", "P", "#0072B2"),
    "buffer": ("buffer", "B", "#009E73"),
    "non_persistent": ("non-persistent", "N", "#7f8c8d"),
    "extra_state": ("extra state", "X", "#E69F00"),
    "tensor": ("tensor", "T", "#56606b"),
}

PLACEHOLDER_BG = QColor(128, 128, 128, 38)
LEFT_COLOR = "#0072B2"    # plots: left side
RIGHT_COLOR = "#E69F00"   # plots: right side
DELTA_COLOR = "#009E73"


def status_style(status: str | None):
    return STATUS_STYLE.get(status, ("", "", "#7f8c8d")) if status else ("", "", "#7f8c8d")


def status_text(status: str | None) -> str:
    text, glyph, _ = status_style(status)
    return f"{glyph} {text}" if text else ""


@lru_cache(maxsize=None)
def badge_icon(letter: str, color: str, size: int = 14) -> QIcon:
    """A small rounded square with a letter: kinds and statuses get a shape as well as a colour."""
    pm = QPixmap(size, size)
    pm.fill(Qt.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.Antialiasing)
    p.setBrush(QColor(color))
    p.setPen(Qt.NoPen)
    p.drawRoundedRect(QRectF(0.5, 0.5, size - 1, size - 1), 3, 3)
    f = QFont()
    f.setPixelSize(int(size * 0.72))
    f.setBold(True)
    p.setFont(f)
    p.setPen(QColor("white"))
    p.drawText(QRectF(0, 0, size, size), Qt.AlignCenter, letter)
    p.end()
    return QIcon(pm)


def kind_icon(kind: str) -> QIcon:
    _, letter, color = KIND_STYLE.get(kind, KIND_STYLE["tensor"])
    return badge_icon(letter, color)


def module_icon() -> QIcon:
    return badge_icon("M", "#4a4a4a")
