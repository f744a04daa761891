"""`napari-semiconv experiment dilemma|dots`: the paper's demonstrations (sec. 3.6 and 4.1).

With ``--json`` the last line on stdout is one JSON object with the summary numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DOTS_FIGURE = "dots_experiment.png"
DOTS_JSON = "dots_experiment.json"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "experiment",
        help="run the paper's demonstrations (coloring dilemma, dot grid)",
        description="Reproduce the two demonstrations of Novotny et al. (ECCV 2018) that a "
        "convolutional embedding cannot tell identical objects apart and a semi-convolutional "
        "one can.",
    )
    sub = p.add_subparsers(dest="experiment", required=True, metavar="{dilemma,dots}")
    d = sub.add_parser(
        "dilemma",
        help="the 1-D convolutional coloring dilemma (sec. 3.6)",
        description="Period-2 signal, regions [-1,1]+2k: translation-invariant operators give "
        "every centre 2k the same color, the semi-convolutional u + (1 - x_u) x'_u gives 2k.",
    )
    d.add_argument("--periods", type=int, default=3, help="centres 2k for k = -N..N (default 3)")
    d.add_argument("--json", action="store_true", help="end with one JSON line of results")
    dots = sub.add_parser(
        "dots",
        help="the dot-grid experiment (sec. 4.1, Fig. 3)",
        description="Train the same small CNN with eq. 5 as a convolutional and as a "
        "semi-convolutional embedding on a grid of identical dots; cluster with k-means and "
        "report the adjusted Rand index of each.",
    )
    add_dots_arguments(dots)
    dots.add_argument("--json", action="store_true", help="end with one JSON line of results")
    p.set_defaults(run=run)
    return p


def add_dots_arguments(p: argparse.ArgumentParser) -> None:
    """--out DIR, --seed N, --steps N of `experiment dots` (`demo` has its own: its --out and
    --steps mean more there)."""
    p.add_argument(
        "--out",
        type=Path,
        help=f"folder for {DOTS_FIGURE} and {DOTS_JSON}, created; earlier ones are replaced "
        "(default: write no files)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--steps", type=int, default=100, help="training steps per embedding (default 100)"
    )


def dots_summary(result: dict) -> dict:
    """The JSON-able summary of :func:`dots_experiment` (drops the images)."""
    keys = ("conv_ari", "semiconv_ari", "conv_loss", "semiconv_loss", "seconds", "n_dots")
    summary = {k: result[k] for k in keys}
    summary.update(
        n_pixels=result["n_pixels"],
        coord_scale=result["coord_scale"],
        steps=result["steps"],
        seed=result["seed"],
        figure=result["figure"],
    )
    return summary


def run_dots(out: Path | None, seed: int, steps: int) -> dict:
    """Run the dot-grid experiment; with ``out`` write the figure and a JSON summary there."""
    from napari_semiconv.core.atomic import atomic_writer
    from napari_semiconv.core.experiments import dots_experiment

    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if out is not None:
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"--out {out} is a file; give a folder")
        out.mkdir(parents=True, exist_ok=True)
    figure = out / DOTS_FIGURE if out is not None else None
    summary = dots_summary(dots_experiment(seed=seed, steps=steps, figure_path=figure))
    if out is not None:
        summary["json"] = str(out / DOTS_JSON)
        with atomic_writer(out / DOTS_JSON, "w", overwrite=True) as handle:
            json.dump(summary, handle, indent=2)
    return summary


def _run_dilemma(args: argparse.Namespace) -> int:
    from napari_semiconv.core.experiments import coloring_dilemma

    if args.periods < 1:
        raise ValueError(f"--periods must be >= 1, got {args.periods}")
    r = coloring_dilemma(periods=args.periods)
    summary = {
        "centres": r["centres"],
        "local_at_centres": r["local_at_centres"],
        "cnn_at_centres": r["cnn_at_centres"],
        "semiconv_at_centres": r["semiconv_at_centres"],
        "invariant_max_spread_at_centres": r["invariant_max_spread_at_centres"],
        "semiconv_max_error": r["semiconv_max_error"],
        "pv_detects_centres": r["pv_detects_centres"],
    }
    print(f"signal: {r['signal']}")
    print(f"centres 2k:                    {r['centres']}")
    print(
        "translation-invariant colors at the centres differ by at most "
        f"{r['invariant_max_spread_at_centres']:.2e} (all centres look alike)"
    )
    print(f"semi-convolutional colors at the centres: {r['semiconv_at_centres']}")
    print(f"semi-convolutional max |Phi_u - 2k(u)| over all samples: {r['semiconv_max_error']:.2e}")
    if args.json:
        print(json.dumps(summary))
    return 0


def _run_dots(args: argparse.Namespace) -> int:
    summary = run_dots(args.out, args.seed, args.steps)
    print(
        f"dot grid ({summary['n_dots']} dots, seed {summary['seed']}): "
        f"ARI conv {summary['conv_ari']:.3f}, semi-conv {summary['semiconv_ari']:.3f} "
        f"in {summary['seconds']:.1f} s"
    )
    if summary["figure"]:
        print(f"figure: {summary['figure']}")
        print(f"results: {summary['json']}")
    if args.json:
        print(json.dumps(summary))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.experiment == "dilemma":
        return _run_dilemma(args)
    return _run_dots(args)
