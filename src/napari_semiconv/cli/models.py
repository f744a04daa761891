"""`napari-semiconv models`: list the bundled models and the user's own."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "models",
        help="list bundled and user models",
        description="Bundled models ship with the package; user models are *.pt files in the "
        "user models folder (SEMICONV_MODEL_DIR overrides it).",
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from napari_semiconv.core.model_store import list_models, user_model_dir

    models = list_models()
    if args.json:
        print(json.dumps(models, default=str, indent=2))
        return 0
    print(f"user models folder: {user_model_dir()}")
    if not models:
        print("no models installed; train one with `napari-semiconv train`")
        return 0
    for m in models:
        config = m.get("config") or {}
        card = m.get("card") or {}
        metrics = card.get("metrics") or {}
        ap = metrics.get("AP")
        state = "" if m.get("installed") else " (not installed)"
        if "error" in m:
            state = f" (unreadable: {m['error']})"
        elif m.get("ref") not in (None, m["name"]):  # the name loads another model
            state = f" (its name loads another model: use --model {m['ref']})"
        details = ", ".join(
            str(x)
            for x in (
                config.get("backbone"),
                config.get("input_mode"),
                "foreground U-Net + binary detector" if config.get("foreground_width") else None,
                ("semi-conv" if config.get("semiconv") else "baseline") if config else None,
                f"AP {ap:.3f}" if isinstance(ap, (int, float)) else None,
            )
            if x
        )
        print(f"{m['name']:24s} {m['kind']:8s} {details}{state}")
    return 0
