"""The window's detail wiring: the statistics of the selected key (``session.jobs.detail_job``), the row chosen
first, copying a key."""
from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QAbstractItemView

from ..session import jobs
from .errors_ui import is_expected, show_error_dialog


class DetailWiring:
    """Mixed into ``MainWindow``: its detail-pane slots (the window's widgets and state are ``self``'s)."""

    def _on_current(self, node) -> None:
        self._request_detail(node)

    def _request_detail(self, node=None) -> None:
        node = node if node is not None else self.compare.current_node()
        comp = self.comparison
        if node is None or comp is None:
            self.runner.cancel("detail")
            return
        if not (node.is_leaf and not node.has_children) or node.data is None:
            self.runner.cancel("detail")
            self.detail.show_module(node.path, comp.modules.get(node.path))
            return
        row = node.data
        key = row.key
        if self.runner.is_busy("diff"):      # one number cruncher: the key the user looks at goes first
            self.runner.cancel("diff")
            self._diff_deferred = True
        self.detail.show_pending(key, row, comp.status(row))
        self.runner.start("detail", f"Statistics of {key}…", jobs.detail_job(row, comp), comp, key,
                          self.detail.bins.value(),
                          on_result=lambda res, r=row, c=comp: self._detail_ready(c, r, res),
                          on_partial=lambda res, r=row, c=comp: self._detail_first_look(c, r, res),
                          on_error=lambda e, k=key: self._detail_failed(k, e),
                          on_cancelled=self._resume_diff)

    def _detail_ready(self, comp, row, res) -> None:
        if comp is not self.comparison:
            return
        self.detail.show_result(res, row, comp.status(row))
        self.sig_detail_shown.emit(res.key)
        QTimer.singleShot(0, self._resume_diff)

    def _detail_first_look(self, comp, row, res) -> None:
        """Pass 1's figures of a large tensor (estimated histogram/percentiles), shown until the exact ones come."""
        if comp is self.comparison:
            self.detail.show_result(res, row, comp.status(row))
            self.sig_detail_first_look.emit(res.key)

    def _detail_failed(self, key: str, exc: BaseException) -> None:
        QTimer.singleShot(0, self._resume_diff)
        if is_expected(exc):
            self.detail.show_error(key, str(exc))
        else:
            self.detail.show_error(key, f"{type(exc).__name__}: {exc}")
            show_error_dialog(self, f"Computing statistics of {key}", exc)

    def _refresh_detail_title(self) -> None:
        node = self.compare.current_node()
        if node is not None and node.data is not None and self.comparison is not None and self.detail.key:
            self.detail.set_title(node.data.key, node.data, self.comparison.status(node.data))

    def _auto_select(self) -> None:
        """Select the key asked for (--select), else -- when nothing is selected -- the most telling problem, so the
        detail pane is never empty on first sight."""
        comp = self.comparison
        if comp is None:
            return
        if self.select_when_ready:
            if self.compare.select_path(self.select_when_ready):
                self.select_when_ready = None
            return
        current = self.compare.selection_key()
        if current and current != self._auto_key:
            return      # the user chose a row (a group row too): leave it
        best = jobs.auto_select_key(comp)
        if best is not None and best != current:
            self._auto_key = best
            self.compare.select_path(best)

    def _scroll_to_current(self) -> None:
        """Bring the current row into view (the banner appearing above the panes shrinks them)."""
        idx = self.compare.selection.currentIndex()
        if idx.isValid():
            # a row chosen for the user (the first problem) is centred, so the problems after it show as well
            auto = self._auto_key is not None and self.compare.selection_key() == self._auto_key
            self.compare.scroll_right_to(idx, QAbstractItemView.PositionAtCenter if auto else
                                         QAbstractItemView.EnsureVisible)

    def copy_key(self) -> None:
        path = self.compare.current_path()
        if path:
            QGuiApplication.clipboard().setText(path)
            self.statusBar().showMessage(f"Copied {path}", 3000)
