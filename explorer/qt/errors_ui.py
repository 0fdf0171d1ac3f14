"""Showing errors: expected ones (``ExplorerError``) inline, anything else in a dialog with the traceback."""
from __future__ import annotations

import sys
import traceback

from PySide6.QtWidgets import QMessageBox, QWidget

from explorer.errors import ExplorerError


def is_expected(exc: BaseException) -> bool:
    return isinstance(exc, ExplorerError)


def traceback_text(exc: BaseException) -> str:
    text = getattr(exc, "__traceback_text__", None)
    if text:
        return text
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def show_error_dialog(parent: QWidget | None, doing: str, exc: BaseException) -> None:
    """An unexpected failure: say what the app was doing, the problem, and the details (tests patch this)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Critical)
    box.setWindowTitle("State-Dict Explorer: unexpected error")
    box.setText(f"{doing} failed.")
    box.setInformativeText(f"The problem is: {type(exc).__name__}: {exc}\n\n"
                           "What was open stays open. Please report this with the file's format.")
    box.setDetailedText(traceback_text(exc))
    box.setStandardButtons(QMessageBox.Ok)
    box.open()   # not exec(): never a nested event loop over running workers


def install_excepthook(get_parent) -> None:
    """Uncaught exceptions in Qt slots go to the same dialog instead of vanishing into stderr."""
    previous = sys.excepthook

    def hook(etype, value, tb):
        if value is not None and value.__traceback__ is None:
            value.__traceback__ = tb
        previous(etype, value, tb)          # still printed, for bug reports
        try:
            show_error_dialog(get_parent(), "An action", value)
        except Exception:  # noqa: BLE001 - never let the hook itself fail
            pass

    sys.excepthook = hook
