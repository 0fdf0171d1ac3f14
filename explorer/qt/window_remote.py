"""The window's remote wiring: File → Open URL…, and, in the status bar, the bytes fetched for each side opened by
URL (``session.remote_bytes``, measured in a worker after each open and each value read: statistics, diff,
simulation)."""
from __future__ import annotations

from PySide6.QtWidgets import QLabel

from ..core.remote.files import is_remote
from ..session import remote_bytes
from ..session.compare import LEFT, RIGHT
from ..session.compute_process import engine, parse_engine
from .dialogs import OpenUrlDialog


class RemoteWiring:
    """Mixed into ``MainWindow`` (its widgets, sides and runner are ``self``'s)."""

    def _init_remote(self) -> None:
        self.transfers = remote_bytes.Tally()
        self.transfer_label = QLabel("")
        self.transfer_label.setObjectName("TransferLabel")
        self.transfer_label.setToolTip("Bytes fetched over the network for the checkpoint opened by URL, in this "
                                       "session: its header when it was opened, then the tensors whose values were "
                                       "read (statistics, histograms, the value diff)")
        self.transfer_label.hide()
        self.statusBar().insertPermanentWidget(0, self.transfer_label)
        self.url_dialog: OpenUrlDialog | None = None
        self.sig_side_loaded.connect(self._remote_side_changed)
        self.sig_detail_shown.connect(lambda _key: self.refresh_transfers())
        self.sig_simulation_done.connect(lambda _report: self.refresh_transfers())

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

    # ---- bytes transferred -------------------------------------------------------------------------------------
    def _remote_sides(self) -> dict:
        """side -> SideData of the sides opened by URL."""
        return {side: d for side, d in enumerate(self.sides)
                if d is not None and not d.is_model and (is_remote(d.label) or is_remote(d.text))}

    def _remote_side_changed(self, side: int) -> None:
        self.transfers.reset(side)
        self.refresh_transfers()

    def reset_transfers(self) -> None:
        """Both sides changed places (or both were replaced): count again."""
        self.transfers.reset(LEFT)
        self.transfers.reset(RIGHT)
        self.refresh_transfers()

    def refresh_transfers(self) -> None:
        """Measure the bytes fetched for the remote sides (in a worker: a shard index is read, a child asked)."""
        remote = self._remote_sides()
        if not remote:
            self._show_transfers()
            return
        labels = {side: d.label for side, d in remote.items()}
        engines = {remote_bytes.PARSE: parse_engine(), remote_bytes.COMPUTE: engine()}
        self.runner.start("bytes", "Counting the bytes transferred…", remote_bytes.measure, labels, engines,
                          on_result=lambda measured, sides=remote: self._transfers_measured(sides, measured),
                          on_error=lambda exc: self._soft_error("Counting the bytes transferred", exc))

    def _transfers_measured(self, sides: dict, measured: dict) -> None:
        now = self._remote_sides()
        kept = {side for side, d in sides.items() if now.get(side) is d}     # a side replaced meanwhile: not its
        self.transfers.update({proc: {s: n for s, n in by_side.items() if s in kept}
                               for proc, by_side in measured.items()})
        self._show_transfers()

    def _show_transfers(self) -> None:
        remote = self._remote_sides()
        text = remote_bytes.status_text({side: d.text for side, d in remote.items()},
                                        {side: self.transfers.total(side) for side in remote})
        self.transfer_label.setText(text)
        self.transfer_label.setVisible(bool(text))

    def transfer_text(self) -> str:
        """What the status bar says of the bytes transferred ("" when no side is remote)."""
        return self.transfer_label.text() if self.transfer_label.isVisibleTo(self) else ""
