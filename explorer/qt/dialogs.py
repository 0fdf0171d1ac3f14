"""The window's file and input dialogs: each returns what the user chose ("" when cancelled)."""
from __future__ import annotations

from PySide6.QtWidgets import QFileDialog, QInputDialog

CHECKPOINT_FILTER = "Checkpoints (*.pt *.pth *.bin *.ckpt *.safetensors *.json *.tar);;All files (*)"
EXPORT_FILTER = "safetensors (*.safetensors);;PyTorch checkpoint (*.pt *.pth)"


def checkpoint_path(parent, side_word: str, start: str) -> str:
    path, _ = QFileDialog.getOpenFileName(parent, f"Open a checkpoint ({side_word})", start, CHECKPOINT_FILTER)
    return path


def folder_path(parent, side_word: str) -> str:
    return QFileDialog.getExistingDirectory(parent, f"Open a checkpoint folder ({side_word})")


def model_spec(parent, history: list[str]) -> str:
    spec, ok = QInputDialog.getItem(
        parent, "Open model", "Model spec — MODULE:CALLABLE, path/to/file.py:CALLABLE or demo:NAME\n"
        "(the callable is run to build the model):", history, 0, True)
    return spec.strip() if ok else ""


def export_path(parent, suggested: str) -> str:
    path, _ = QFileDialog.getSaveFileName(parent, "Export the fixed checkpoint", suggested, EXPORT_FILTER)
    return path
