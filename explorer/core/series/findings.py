"""What a run's figures say, stated plainly: each finding names its keys and checkpoints and follows from the
measured values alone (no guess about the model)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .measure import Track

STILL_MOVING = 0.01   # a running statistic still moves when its last ‖x−prev‖/‖prev‖ is above 1%
FASTEST = 5           # keys named as growing fastest
NAMED = 10            # keys named in one finding's sentence (the finding's ``keys`` holds every one)


@dataclass
class Finding:
    """``kind``: frozen, nonfinite, fastest_growth, appears, vanishes, still_moving, shape_changes, unread."""

    kind: str
    text: str
    keys: list[str] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"kind": self.kind, "text": self.text, "keys": self.keys, "checkpoints": self.checkpoints}


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:NAMED])
    return shown + (f", … ({len(keys) - NAMED:,} more)" if len(keys) > NAMED else "")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _verb(items: list, verb: str) -> str:
    return verb if len(items) != 1 else verb + ("es" if verb.endswith("sh") else "s")


def frozen_keys(tracks: list[Track]) -> list[str]:
    """Keys present in at least two checkpoints whose values never changed from one checkpoint to the next."""
    out = []
    for t in tracks:
        steps = [f for f in t.frac_changed if f is not None]
        if steps and sum(t.present) >= 2 and all(f == 0 for f in steps) and len(steps) == sum(t.present) - 1:
            out.append(t.key)
    return out


def first_nonfinite(tracks: list[Track]) -> dict[str, int]:
    """Key -> the first checkpoint where it holds a NaN or an infinity."""
    out = {}
    for t in tracks:
        for i, n in enumerate(t.nonfinite):
            if n:
                out[t.key] = i
                break
    return out


def is_counter(t: Track) -> bool:
    """An integer or bool tensor (``num_batches_tracked``, a step count, position ids): its norm growing says the
    counter counted, not that weights drifted."""
    names = [d for d in t.dtype if d is not None]
    return bool(names) and not any(d.startswith(("float", "bfloat", "complex")) for d in names)


def growth(t: Track) -> tuple[float, int, int] | None:
    """(last norm / first norm, first index, last index) over the checkpoints holding the key with a finite norm."""
    seen = [(i, n) for i, n in enumerate(t.norm) if n is not None and math.isfinite(n)]
    if len(seen) < 2 or seen[0][1] <= 0:
        return None
    return seen[-1][1] / seen[0][1], seen[0][0], seen[-1][0]


def findings(tracks: list[Track], n: int) -> list[Finding]:
    """The findings of a run of ``n`` checkpoints, most alarming first."""
    out: list[Finding] = []
    bad = first_nonfinite(tracks)
    if bad:
        at = min(bad.values())
        keys = [k for k, i in bad.items() if i == at]
        later = len(bad) - len(keys)
        out.append(Finding("nonfinite", f"NaN/Inf first appear at checkpoint {at}, in {_plural(len(keys), 'key')}: "
                           f"{_names(keys)}" + (f"; {later:,} more keys hold NaN/Inf later" if later else ""),
                           keys, [at]))
    if n >= 2:
        frozen = frozen_keys(tracks)
        if frozen:
            out.append(Finding("frozen", f"{_plural(len(frozen), 'key')} never changed across the run (frozen or "
                               f"not trained): {_names(frozen)}", frozen))
    appear = [(t.key, t.present.index(True)) for t in tracks if not t.present[0] and any(t.present)]
    if appear:
        named = _names([f"{k} (checkpoint {i})" for k, i in appear])
        out.append(Finding("appears", f"{_plural(len(appear), 'key')} {_verb(appear, 'appear')} mid-run: {named}",
                           [k for k, _ in appear], sorted({i for _, i in appear})))
    vanish = [(t.key, n - 1 - t.present[::-1].index(True)) for t in tracks if not t.present[-1] and any(t.present)]
    if vanish:
        named = _names([f"{k} (last in checkpoint {i})" for k, i in vanish])
        out.append(Finding("vanishes", f"{_plural(len(vanish), 'key')} {_verb(vanish, 'vanish')} before the end: "
                           f"{named}", [k for k, _ in vanish], sorted({i for _, i in vanish})))
    grown = sorted(((g, t.key) for t in tracks if not t.is_running_stat and not is_counter(t)
                    and (g := growth(t)) is not None
                    and float(f"{g[0]:.3g}") > 1), key=lambda x: -x[0][0])[:FASTEST]   # as printed: no "×1"
    if grown:   # weights and floating buffers only: a counter's growth is its counting
        parts = [f"{k} ×{g:.3g} (checkpoint {a} → {b})" for (g, a, b), k in grown]
        out.append(Finding("fastest_growth", "norms that grow fastest (last / first): " + ", ".join(parts),
                           [k for _, k in grown]))
    moving = [t.key for t in tracks if t.is_running_stat and n >= 2 and t.rel_change_prev[-1] is not None
              and not t.rel_change_prev[-1] <= STILL_MOVING]
    if moving:
        out.append(Finding("still_moving", f"{_plural(len(moving), 'running statistic')} still moving at the end "
                           f"(relative change over the last interval above {STILL_MOVING:.0%}): {_names(moving)}",
                           moving, [n - 1]))
    reshaped = [t.key for t in tracks if len({s for s in t.shape if s is not None}) > 1]
    if reshaped:
        out.append(Finding("shape_changes", f"{_plural(len(reshaped), 'key')} {_verb(reshaped, 'change')} shape "
                           f"during the run: {_names(reshaped)}", reshaped))
    unread = [t.key for t in tracks if t.errors]
    if unread:
        first = next(t for t in tracks if t.errors)
        out.append(Finding("unread", f"{_plural(len(unread), 'key')} could not be measured everywhere: "
                           f"{_names(unread)} (first: {first.errors[0]})", unread))
    return out
