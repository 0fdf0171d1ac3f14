"""Is the model of a checkpoint one file away? A Hugging Face checkpoint folder holds a ``config.json`` naming its
architecture; the window offers that model (an ``hf:`` spec, built on the meta device within the model budget) as the
other side in one click. Plain Python, no transformers: only the small JSON file is read."""
from __future__ import annotations

import json
import os

MAX_CONFIG_BYTES = 4 << 20     # a config.json is a few KB; anything larger is not one


def config_model(text: str) -> tuple[str, str] | None:
    """``("hf:FOLDER", "LlamaForCausalLM")`` when ``text`` (a local checkpoint file or folder) lies in a folder whose
    ``config.json`` names an architecture; None otherwise (URLs, model specs, no or unreadable config)."""
    if "://" in text or not os.path.exists(text):
        return None
    folder = text if os.path.isdir(text) else os.path.dirname(os.path.abspath(text))
    path = os.path.join(folder, "config.json")
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > MAX_CONFIG_BYTES:
            return None
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    archs = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str) or not archs \
            or not isinstance(archs, list) or not isinstance(archs[0], str):
        return None
    return f"hf:{folder}", archs[0]
