"""The banner above the panes: what ``load_state_dict`` would do, in plain words, with torch's exact message, and
the remap suggestions (preview, apply, export). Also the place for inline messages (expected errors)."""
from __future__ import annotations

from html import escape

from PySide6.QtCore import Qt, Signal
from functools import lru_cache

from PySide6.QtGui import QFont, QIcon
from PySide6.QtWidgets import (QApplication, QFrame, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QStyle,
                               QToolButton, QVBoxLayout, QWidget)

from ..session import compare as C

OK_STYLE = "QFrame#Banner { background: #e8f6ef; border: 1px solid #009E73; border-radius: 4px; }"
BAD_STYLE = "QFrame#Banner { background: #fdecea; border: 1px solid #C0392B; border-radius: 4px; }"
INFO_STYLE = "QFrame#Banner { background: #eef3fa; border: 1px solid #0072B2; border-radius: 4px; }"


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def summarize(report, comparison: "C.Comparison | None" = None) -> tuple[bool, str]:
    """(raises, plain-words summary) of a LoadReport. The figures are the core explanation's own: the model keys
    (every report but the unexpected ones) split into those that load, stay missing, mismatch in shape, or keep their
    value without a copy, so the parts add up to the total the explanation names."""
    unexpected_keys = report.unexpected_keys
    counts: dict[str, int] = {}
    running = []
    uncompared = 0
    for k, kr in report.keys.made_items():   # the unexpected keys' reports (not made yet) are counted below
        counts[kr.status] = counts.get(kr.status, 0) + 1
        uncompared += kr.status == C.CHANGED and not kr.certain
        if kr.status == C.RUNNING_STAT:
            running.append(k)
    raises = report.raises
    loads = len(report.loaded_keys)
    missing = counts.get(C.MISSING, 0)
    unexpected = len(unexpected_keys)
    shape = counts.get(C.SHAPE_MISMATCH, 0)
    total = sum(n for st, n in counts.items() if st != C.UNEXPECTED)
    changed = counts.get(C.CHANGED, 0) - uncompared + counts.get(C.RUNNING_STAT, 0) + counts.get(C.DTYPE_CAST, 0)
    kept = max(total - loads - missing - shape, 0)
    if raises:
        head = f"<b>✗ load_state_dict would raise {report.error_type or 'an error'}.</b>"
    else:
        head = "<b>✓ load_state_dict would succeed.</b>"
    explanation = report.explanation
    if explanation:
        head += " " + escape(explanation, quote=False)
    verb = "are copied before it raises" if raises else "load"
    news = [f"{changed} with new values"] if changed or not uncompared else []
    if uncompared:     # a model side not materialized: whether these values differ is not known
        news.append(f"{uncompared} whose values were not compared")
    parts = [f"{loads} {verb}" + (f" ({', '.join(news)})" if loads else "")]
    if missing:
        parts.append(f"{missing} missing")
    if shape:
        parts.append(f"<span style='color:#C0392B'>{plural(shape, 'shape mismatch', 'shape mismatches')}</span>")
    if kept:
        parts.append(f"{kept} not loaded (keep{'s' if kept == 1 else ''} {'its' if kept == 1 else 'their'} "
                     "current value)")
    text = head + f"<br>In numbers — of the {plural(total, 'model key')}: " + ", ".join(parts) + "."
    text += (f" Checkpoint keys the model has no place for: {unexpected} (unexpected" +
             (", ignored" if not raises or not report.strict else "") + ")." if unexpected else "")
    if counts.get(C.DTYPE_CAST):
        text += f" {counts[C.DTYPE_CAST]} of the loaded keys are cast to the model's dtype."
    if running:
        shown = ", ".join(running[:4]) + (f" and {len(running) - 4} more" if len(running) > 4 else "")
        text += f"<br>⟳ Running statistics overwritten: {shown}."
    return raises, text


@lru_cache(maxsize=1)
def suggestion_icon() -> QIcon:
    """The light bulb of a suggestion (resources/suggestion.svg), else the style's information icon."""
    from .resources import resource_path
    try:
        icon = QIcon(str(resource_path("suggestion.svg")))
        if not icon.pixmap(16, 16).isNull():
            return icon
    except FileNotFoundError:
        pass
    return QApplication.style().standardIcon(QStyle.SP_MessageBoxInformation)


class SuggestionRow(QWidget):
    sig_apply = Signal(object)
    sig_export = Signal(object)

    def __init__(self, suggestion, parent=None):
        super().__init__(parent)
        self.suggestion = suggestion
        desc = suggestion.title
        ptext = f"  →  {suggestion.preview_text()}"
        self.icon = QLabel()
        self.icon.setPixmap(suggestion_icon().pixmap(16, 16))   # an icon, not a glyph some fonts lack
        self.icon.setToolTip("A remap suggestion")
        label = QLabel(f"{escape(desc, quote=False)}<span style='color:#555'>{escape(ptext, quote=False)}</span>")
        label.setTextFormat(Qt.RichText)
        label.setWordWrap(True)
        tip = [suggestion.reason]
        if suggestion.snippet:
            tip.append("Equivalent Python:\n" + suggestion.snippet)
        label.setToolTip("\n\n".join(t for t in tip if t))
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip("Rename the right side's keys this way and re-align the rows")
        self.export_button = QPushButton("Export fixed…")
        self.export_button.setToolTip("Save the right side's state dict with this remap applied")
        self.apply_button.clicked.connect(lambda: self.sig_apply.emit(self.suggestion))
        self.export_button.clicked.connect(lambda: self.sig_export.emit(self.suggestion))
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.icon, 0, Qt.AlignTop)
        lay.addWidget(label, 1)
        lay.addWidget(self.apply_button)
        lay.addWidget(self.export_button)


class Banner(QFrame):
    """Simulation summary, suggestions, or an inline message. Hidden when empty."""

    sig_apply = Signal(object)
    sig_export = Signal(object)
    sig_closed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("Banner")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.RichText)
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.message = QPlainTextEdit()
        self.message.setReadOnly(True)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.TypeWriter)
        mono.setPointSize(max(8, self.font().pointSize() - 1))
        self.message.setFont(mono)
        self.message.setMaximumHeight(72)
        self.message.setLineWrapMode(QPlainTextEdit.WidgetWidth)
        self.message.hide()
        self.close_button = QToolButton()
        self.close_button.setText("✕")
        self.close_button.setAutoRaise(True)
        self.close_button.setToolTip("Hide this banner")
        self.close_button.clicked.connect(self._close)
        self.suggestions_box = QVBoxLayout()
        self.suggestions_box.setContentsMargins(0, 0, 0, 0)
        self.rows: list[SuggestionRow] = []
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.summary, 1)
        top.addWidget(self.close_button, 0, Qt.AlignTop)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 4, 8, 4)
        lay.setSpacing(3)
        lay.addLayout(top)
        lay.addWidget(self.message)
        lay.addLayout(self.suggestions_box)
        self.raises: bool | None = None
        self.hide()

    def _close(self) -> None:
        self.hide()
        self.sig_closed.emit()

    def _clear_suggestions(self) -> None:
        for row in self.rows:
            self.suggestions_box.removeWidget(row)
            row.deleteLater()
        self.rows = []

    def show_report(self, report, comparison=None, note: str = "") -> None:
        """``note``: what the prediction cannot know (a checkpoint simulated as the model), shown first."""
        raises, text = summarize(report, comparison)
        if note:
            text = f"<span style='color:#8a4b00'><b>Note:</b> {escape(note, quote=False)}</span><br>" + text
        self.raises = raises
        self.setStyleSheet(BAD_STYLE if raises else OK_STYLE)
        self.summary.setText(text)
        msg = report.error_message or ""
        if msg:
            etype = report.error_type or ""
            self.message.setPlainText(f"{etype}: {msg}" if etype and not msg.startswith(etype) else msg)
            self.message.show()
        else:
            self.message.hide()
        self._clear_suggestions()
        for s in report.suggestions[:4]:
            row = SuggestionRow(s)
            row.sig_apply.connect(self.sig_apply)
            row.sig_export.connect(self.sig_export)
            self.suggestions_box.addWidget(row)
            self.rows.append(row)
        self.show()

    def show_message(self, html: str, *, error: bool = True, details: str = "") -> None:
        """An inline message: an expected error or a hint. Cleared by the next action."""
        self.raises = None
        self.setStyleSheet(BAD_STYLE if error else INFO_STYLE)
        self.summary.setText(html)
        self._clear_suggestions()
        if details:
            self.message.setPlainText(details)
            self.message.show()
        else:
            self.message.hide()
        self.show()

    def text(self) -> str:
        return self.summary.text() + ("\n" + self.message.toPlainText() if self.message.isVisible() else "")
