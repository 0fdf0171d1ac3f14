"""The window's remote wiring: File → Open URL…"""
from __future__ import annotations

from ..core.remote.files import is_remote
from ..session.compare import LEFT, RIGHT
from .dialogs import OpenUrlDialog


class RemoteWiring:
    """Mixed into ``MainWindow`` (its widgets, sides and runner are ``self``'s)."""

    def _init_remote(self) -> None:
        self.url_dialog: OpenUrlDialog | None = None

    def ask_url(self, side: int | None = None) -> None:
        """File → Open URL…: the dialog opens on the pane a drop would fill (left while it is empty)."""
        if side is None:
            side = RIGHT if self.sides[LEFT] is not None else LEFT
        recent = [t for t in self.recent_files() if is_remote(t)]
        dialog = OpenUrlDialog(self, side, recent)
        dialog.sig_chosen.connect(self.open_path)
        dialog.finished.connect(dialog.deleteLater)
        self.url_dialog = dialog
        dialog.open()
