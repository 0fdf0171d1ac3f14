"""The filter bar above the panes and the activity indicator in the status bar."""
from __future__ import annotations

import time

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QToolButton, QWidget

BAD_REGEX_STYLE = "QLineEdit { border: 1px solid #C0392B; }"


class FilterBar(QWidget):
    """Filter text, Regex / Differences only / Problems only, and how many keys are shown."""

    sig_changed = Signal(int)    # the delay (ms) before the filter is applied: typing waits, a tick does not

    def __init__(self, parent=None):
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("Filter keys (substring; tick Regex for a regular expression)   Ctrl+F")
        self.edit.setClearButtonEnabled(True)
        self.edit.textChanged.connect(lambda _: self.sig_changed.emit(150))
        self.regex = QCheckBox("Regex")
        self.diff_only = QCheckBox("Differences only")
        self.problems_only = QCheckBox("Problems only")
        for box in (self.regex, self.diff_only, self.problems_only):
            box.toggled.connect(lambda _: self.sig_changed.emit(0))
        self.count = QLabel("")
        self.count.setStyleSheet("color: gray;")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit, 1)
        for w in (self.regex, self.diff_only, self.problems_only, self.count):
            lay.addWidget(w)

    def query(self) -> dict:
        """The keyword arguments of ``Comparison.filtered_keys`` besides the text."""
        return dict(regex=self.regex.isChecked(), differences_only=self.diff_only.isChecked(),
                    problems_only=self.problems_only.isChecked())

    def by_status(self) -> bool:
        return self.diff_only.isChecked() or self.problems_only.isChecked()

    def show_error(self, message: str) -> None:
        self.edit.setStyleSheet(BAD_REGEX_STYLE if message else "")
        self.edit.setToolTip(message)
        if message:
            self.count.setText("bad regex")


class Activity:
    """The status bar's right end: what runs, a progress bar (at most 5 repaints a second) and Cancel."""

    def __init__(self, status_bar, cancel):
        self.label = QLabel("")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(180)
        self.progress.setMaximumHeight(16)
        self.progress.setTextVisible(False)
        self.cancel_button = QToolButton()
        self.cancel_button.setText("Cancel")
        self.cancel_button.clicked.connect(lambda: cancel())
        for w in (self.label, self.progress, self.cancel_button):
            status_bar.addPermanentWidget(w)
        self.progress.hide()
        self.cancel_button.hide()
        self._last_ui = 0.0

    def show_active(self, label: str | None) -> None:
        """``label``: the newest running job's, or None when nothing runs."""
        busy = label is not None
        self.label.setText(label or "")
        if busy:
            self.progress.setRange(0, 0)
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)

    def show_progress(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last_ui < 0.2 and done < total:   # QProgressBar repaints synchronously: 5 Hz
            return
        self._last_ui = now
        if self.label.text() != label:
            self.label.setText(label)
        if total > 0:
            if self.progress.maximum() != total:
                self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
