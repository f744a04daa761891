"""Model cards as short text for the Segment widget (input mode, training data, metrics)."""

from __future__ import annotations

from typing import Any

# card keys shown first, in this order; anything else follows (versions are left out). The
# model's own held-out figures come before its history and the detector's many entries, which
# would otherwise push them out of view in the widget.
_FIRST = (
    "name",
    "description",
    "metrics",
    "metrics_protocol",
    "history",
    "input_mode",
    "normalisation",
    "data",
    "training_data",
    "recipe",
)
_SKIP = {"versions", "train_state"}


def _short(value: Any, limit: int = 160) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        text = ", ".join(
            f"{k} {_short(v, 40)}" for k, v in value.items() if not isinstance(v, dict)
        )
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_short(v, 40) for v in value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def card_text(row: dict[str, Any]) -> str:
    """One line per card entry for a ``list_models()`` row or {"card", "config"} dict."""
    if row.get("error"):
        return f"Unreadable: {row['error']}"
    card = dict(row.get("card") or {})
    config = row.get("config") or {}
    card.setdefault("input_mode", config.get("input_mode", "?"))
    if config.get("backbone"):
        card.setdefault("backbone", config["backbone"])
    keys = [k for k in _FIRST if k in card] + sorted(k for k in card if k not in _FIRST)
    lines = [
        f"{k.replace('_', ' ')}: {_short(card[k])}"
        for k in keys
        if k not in _SKIP and card[k] not in (None, "", {}, [])
    ]
    return "\n".join(lines) if lines else "No model card."
