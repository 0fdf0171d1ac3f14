"""The first-run demo pair: ``demo:MyBatchNormModel`` on the left, and on the right a checkpoint of that model after a
few train-mode steps (saved the way training scripts do: model, optimizer and epoch in one dict)."""
from __future__ import annotations

import os
import tempfile

from ..core.atomic import atomic_output


def demo_checkpoint_path() -> str:
    """Where the demo checkpoint lives: the platform's cache folder (a temp folder if there is none)."""
    try:
        from PySide6.QtCore import QStandardPaths
        base = QStandardPaths.writableLocation(QStandardPaths.CacheLocation)
    except Exception:  # noqa: BLE001
        base = ""
    base = base or os.path.join(tempfile.gettempdir(), "state-dict-explorer")
    return os.path.join(base, "demo_batchnorm_after_training.pt")


def make_demo_checkpoint(path: str, *, steps: int = 5, progress=None, should_stop=None) -> str:
    """Train ``MyBatchNormModel`` for a few steps in train mode (BatchNorm running statistics move) and save it."""
    import torch

    from explorer.core.demo_models import MyBatchNormModel
    gen = torch.Generator().manual_seed(7)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        model = MyBatchNormModel()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(steps):
        x = torch.randn(32, 10, generator=gen) * 2.0 + 0.5
        target = torch.randn(32, 5, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress:
            progress(step + 1, steps)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_output(path) as f:
        torch.save({"epoch": steps, "model_state_dict": model.state_dict(),
                    "optimizer_state_dict": opt.state_dict()}, f)
    return path
