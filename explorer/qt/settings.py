"""What the window remembers between runs (QSettings): geometry, splitters, options, recent files and model specs."""
from __future__ import annotations

from PySide6.QtCore import QSettings

MAX_RECENT = 10
ORG, APP = "StateDictExplorer", "State-Dict Explorer"


def default_settings() -> QSettings:
    return QSettings(ORG, APP)


def _splitters(window) -> tuple:
    return (("main", window.splitter), ("panes", window.compare.splitter), ("detail", window.detail.splitter))


def restore_window(window, s: QSettings) -> None:
    """Geometry, splitter positions and options as they were at the last close."""
    geo = s.value("window/geometry")
    if geo is not None:
        window.restoreGeometry(geo)
    state = s.value("window/state")
    if state is not None:
        window.restoreState(state)
    for name, splitter in _splitters(window):
        v = s.value(f"splitters/{name}")
        if v is not None:
            splitter.restoreState(v)
    window.act_strict.setChecked(as_bool(s.value("options/strict", True)))
    window.act_assign.setChecked(as_bool(s.value("options/assign", False)))
    window.detail.log_y.setChecked(as_bool(s.value("options/log_y", False)))
    try:
        window.detail.bins.setValue(int(s.value("options/bins", 128)))
    except (TypeError, ValueError):
        pass
    window.regex_box.setChecked(as_bool(s.value("options/regex", False)))


def save_window(window, s: QSettings) -> None:
    s.setValue("window/geometry", window.saveGeometry())
    s.setValue("window/state", window.saveState())
    for name, splitter in _splitters(window):
        s.setValue(f"splitters/{name}", splitter.saveState())
    s.setValue("options/strict", window.act_strict.isChecked())
    s.setValue("options/assign", window.act_assign.isChecked())
    s.setValue("options/log_y", window.detail.log_y.isChecked())
    s.setValue("options/bins", window.detail.bins.value())
    s.setValue("options/regex", window.regex_box.isChecked())
    s.sync()


class History:
    """The recent files and the model specs typed before, newest first."""

    def __init__(self, settings: QSettings):
        self.settings = settings

    def files(self) -> list[str]:
        return as_list(self.settings.value("recent/files"))

    def add_file(self, text: str) -> None:
        if text.startswith("demo:") or not text:
            return
        self._push("recent/files", self.files(), text)

    def models(self) -> list[str]:
        return as_list(self.settings.value("recent/models"))

    def add_model(self, spec: str) -> None:
        self._push("recent/models", self.models(), spec)

    def _push(self, name: str, items: list[str], text: str) -> None:
        self.settings.setValue(name, [text] + [t for t in items if t != text][:MAX_RECENT - 1])


def as_list(value) -> list[str]:
    """A QSettings list (an INI file gives a str for one item, None for none)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value]


def as_bool(value) -> bool:
    """A QSettings bool (an INI file gives "true"/"false")."""
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)
