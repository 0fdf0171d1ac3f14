"""The window's file and input dialogs: each function returns what the user chose ("" when cancelled); the URL dialog
says it with a signal."""
from __future__ import annotations

import os

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QCompleter, QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout, QInputDialog, QLabel,
                               QLineEdit, QRadioButton, QVBoxLayout)

from ..core.remote.files import is_remote

CHECKPOINT_FILTER = "Checkpoints (*.pt *.pth *.bin *.ckpt *.safetensors *.json *.tar);;All files (*)"
EXPORT_FILTER = "safetensors (*.safetensors);;PyTorch checkpoint (*.pt *.pth)"


def checkpoint_path(parent, side_word: str, start: str, pointed_at=None) -> str:
    """The checkpoint file the user chose ("" when cancelled). ``pointed_at(path)`` is called with each file the
    user selects in the dialog before choosing (a click on a file, the arrow keys): the window reads it ahead, so
    the open that follows a click on Open -- or the second click of a double-click -- finds it parsed."""
    dialog = QFileDialog(parent, f"Open a checkpoint ({side_word})", start, CHECKPOINT_FILTER)
    dialog.setFileMode(QFileDialog.ExistingFile)
    dialog.setAcceptMode(QFileDialog.AcceptOpen)
    if pointed_at is not None:
        dialog.currentChanged.connect(lambda path: pointed_at(path) if path and os.path.isfile(path) else None)
    try:
        if dialog.exec() != QDialog.Accepted:
            return ""
        chosen = dialog.selectedFiles()
        return chosen[0] if chosen else ""
    finally:
        dialog.deleteLater()


def folder_path(parent, side_word: str) -> str:
    return QFileDialog.getExistingDirectory(parent, f"Open a checkpoint folder ({side_word})")


def model_spec(parent, history: list[str]) -> str:
    spec, ok = QInputDialog.getItem(
        parent, "Open model", "Model spec — MODULE:CALLABLE, path/to/file.py:CALLABLE or demo:NAME\n"
        "(the callable is run to build the model):", history, 0, True)
    return spec.strip() if ok else ""


def confirm_download(parent, url: str, size: int | None) -> bool:
    """Ask before fetching a whole file from a server that ignores Range requests."""
    from PySide6.QtWidgets import QMessageBox
    how_much = f"{size / 1e6:,.1f} MB" if size else "its whole size"
    answer = QMessageBox.question(
        parent, "Download the whole file?",
        f"The server of\n{url}\ndoes not support range requests, so its header cannot be read alone.\n\n"
        f"Download the whole file ({how_much}) once into the cache?", QMessageBox.Yes | QMessageBox.No,
        QMessageBox.No)
    return answer == QMessageBox.Yes


def export_path(parent, suggested: str) -> str:
    """Where to export: a new file (the export refuses an existing one, so the dialog offers no replacing)."""
    path, _ = QFileDialog.getSaveFileName(parent, "Export the fixed checkpoint (to a new file)", suggested,
                                          EXPORT_FILTER, options=QFileDialog.DontConfirmOverwrite)
    return path


URL_HELP = ("A checkpoint by URL, read in ranges (only the header until values are asked for):\n"
            "http(s)://HOST/PATH/model.safetensors (the server must answer Range requests), "
            "hf://ORG/REPO[@REV]/PATH, s3://BUCKET/KEY, gs://BUCKET/KEY")
NOT_A_URL = ("not a URL this window reads — write http(s)://…, hf://ORG/REPO/PATH, s3://BUCKET/KEY or "
             "gs://BUCKET/KEY (File → Open for a file on this machine)")


class OpenUrlDialog(QDialog):
    """File → Open URL…: a URL (recent ones offered as you type) and the pane to open it in. Shown with ``open()``
    (no nested event loop over running workers); ``sig_chosen(side, url)`` once the user confirms a URL."""

    sig_chosen = Signal(int, str)

    def __init__(self, parent, side: int, recent: list[str]):
        super().__init__(parent)
        self.setWindowTitle("Open a checkpoint by URL")
        self.setObjectName("OpenUrlDialog")
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("https://…/model.safetensors   hf://ORG/REPO/model.safetensors")
        self.edit.setMinimumWidth(520)
        self.edit.setClearButtonEnabled(True)
        self.edit.setCompleter(QCompleter(recent, self))
        if recent:
            self.edit.setText(recent[0])
            self.edit.selectAll()
        self.left = QRadioButton("Left pane")
        self.right = QRadioButton("Right pane")
        (self.left if side == 0 else self.right).setChecked(True)
        self.error = QLabel("")
        self.error.setStyleSheet("color: #C0392B;")
        self.error.setWordWrap(True)
        self.error.hide()
        self.edit.textChanged.connect(lambda _: self.error.hide())
        buttons = QDialogButtonBox(QDialogButtonBox.Open | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        help_label = QLabel(URL_HELP)
        help_label.setWordWrap(True)
        help_label.setStyleSheet("color: palette(mid);")
        sides = QHBoxLayout()
        sides.addWidget(self.left)
        sides.addWidget(self.right)
        sides.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addWidget(help_label)
        lay.addWidget(self.edit)
        lay.addWidget(self.error)
        lay.addLayout(sides)
        lay.addWidget(buttons)

    def side(self) -> int:
        return 0 if self.left.isChecked() else 1

    def url(self) -> str:
        return self.edit.text().strip()

    def accept(self) -> None:
        url = self.url()
        if not is_remote(url):
            self.error.setText(NOT_A_URL)
            self.error.show()
            return
        super().accept()
        self.sig_chosen.emit(self.side(), url)
