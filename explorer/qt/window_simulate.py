"""The window's simulation wiring: run ``session.jobs.simulate``, paint its report, apply or export a suggestion."""
from __future__ import annotations

import os

from ..session import jobs
from ..session.compare import RIGHT
from . import dialogs


class SimulationWiring:
    """Mixed into ``MainWindow``: its simulation slots (the window's widgets and state are ``self``'s)."""

    def sim_option_changed(self, _=None) -> None:
        if self.comparison is not None and self.comparison.simulated:
            self.simulate()

    def simulate(self) -> None:
        left, right = self.sides
        if left is None or right is None:
            if self._loads_pending():
                self.simulate_wanted = True    # runs once both sides are open
            else:
                self._simulate_impossible()
            return
        if not jobs.module_available("explorer.core.simulate"):
            self.simulate_wanted = False
            self.unmet["simulate"] = "the load was not simulated (explorer.core.simulate is missing)"
            self.banner.show_message("Simulation is not available in this build (explorer.core.simulate missing).")
            return
        self.simulate_wanted = False
        self.unmet.pop("simulate", None)
        self.runner.start("simulate", "Simulating load_state_dict…", jobs.simulate, left, right, self.remap,
                          self.act_strict.isChecked(), self.act_assign.isChecked(),
                          on_result=self._simulation_ready, on_error=self._simulation_failed)

    def _simulate_impossible(self) -> None:
        """A simulation was asked for, a side is missing and none is on its way: say so (never wait for it)."""
        self.simulate_wanted = False
        failed = bool(self.failed_sides)
        self.unmet["simulate"] = "the load was not simulated (" + \
            ("a side did not open" if failed else "it needs a side on the left and on the right") + ")"
        self.banner.show_message(
            "Simulate load runs <code>left.load_state_dict(right)</code>: it needs a <b>model</b> (File → Open "
            "model…) or a checkpoint on the left and a <b>checkpoint</b> on the right"
            + (" — a side did not open." if failed else "."), error=failed)

    def _simulation_failed(self, exc: BaseException) -> None:
        self.unmet["simulate"] = f"the load was not simulated ({type(exc).__name__}: {exc})"
        self._failed("Simulating the load", exc)

    def _simulation_ready(self, result) -> None:
        report, note = result
        comp = self.comparison
        if comp is None:
            return
        comp.apply_simulation(report)
        self.banner.show_report(report, comp, note=note)
        self._statuses_changed()
        self.centralWidget().layout().activate()   # the banner's height now, so that scrolling aims right
        self._auto_select()
        self._scroll_to_current()
        self.sig_simulation_done.emit(report)

    def apply_suggestion(self, suggestion) -> None:
        """Apply a remap suggestion to the right side: rows re-align and the simulation re-runs."""
        remap = suggestion.remap
        right = self.sides[RIGHT]
        if right is None:
            return
        self.statusBar().showMessage(f"Applied: {suggestion.title}", 8000)
        self.simulate_wanted = True
        if remap.kind == "entry":
            self.choose_entry(RIGHT, tuple(remap.entry or ()))
            return
        self.remap = remap
        self.rename = {k: remap.new_key(k) for k in right.infos if remap.new_key(k) != k}
        self.rebuild()

    def export_suggestion(self, suggestion) -> None:
        right = self.sides[RIGHT]
        if right is None:
            return
        base = os.path.splitext(os.path.basename(right.label))[0] if not right.is_model else "model"
        name, n = f"{base}_fixed.safetensors", 1
        while os.path.lexists(name):   # exports go to new files: offer a name not taken
            n += 1
            name = f"{base}_fixed-{n}.safetensors"
        path = dialogs.export_path(self, name)
        if path:
            self.export_fixed(suggestion, path)

    def export_fixed(self, suggestion, path: str) -> None:
        """Write the right side with a suggestion's remap applied (atomically, by the core) in a worker."""
        right = self.sides[RIGHT]
        if right is None:
            return
        self.runner.start("export", f"Writing {os.path.basename(path)}…", jobs.export_fixed, suggestion.remap, right,
                          path, on_result=self._exported,
                          on_error=lambda e: self._failed("Exporting the fixed checkpoint", e))

    def _exported(self, path: str) -> None:
        self.statusBar().showMessage(f"Wrote {path}", 10000)
        self.sig_exported.emit(path)
