"""5-fold cross-validation on the BBBC010 training wells, several recipes side by side.

Every (recipe, fold) trains in its own process (they share one GPU); when its time budget is
spent the trainer validates on the fold's held-out wells and records the metrics in the model
card. The fold split comes from
``napari_semiconv.core.data.dataset.kfold_wells`` with the same seed the trainer uses, so the
held-out wells are never seen in training. Writes ``crossval.json`` and ``crossval.md`` to --out.

``brightfield-cascade`` (worms-brightfield's recipe) runs after the detectors, its folds in
parallel: for each, ``train-foreground`` on that fold's training wells (read from the
binary-semiconv fold model's card) puts a U-Net in front of that model (``--foreground-steps``,
then ``--foreground-stage2`` and ``--foreground-stage3`` more at jitter 0.3, as the bundled file;
or, with ``--foreground-budget S``, the three stages for 35 / 35 / 30 % of S seconds, which a
GPU session's 15 minutes need), ``tune-thresholds`` chooses the U-Net's cut on the fold's
training wells (``--foreground-cuts``, at the cascade's other defaults; the best by avS, as the
bundled file's cut was chosen on its training wells), and ``evaluate`` scores the cascade on the
fold's held-out wells with segment's defaults.

``binary-twostage`` (the paper's ablation schedule, sec. 4.4) runs after binary-plain, on the
same folds: each fold's plain model trains ``--stage2-steps`` more, once plain and once with the
embedding head and σ attached fresh, with otherwise identical settings; the rows
``binary-twostage-plain`` and ``binary-twostage-semiconv`` compare them.

Example (what produced docs/benchmarks.md, on one H100):
    python benchmarks/crossval.py --data gpu_data/bbbc010/train --out runs/cv \
        --recipes binary-semiconv,binary-plain,brightfield-semiconv --time-budget 330
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RECIPES = {
    # name: (input mode, semiconv)
    "binary-semiconv": ("binary", True),
    "binary-plain": ("binary", False),
    "brightfield-semiconv": ("brightfield", True),
    "brightfield-plain": ("brightfield", False),
}
#: worms-brightfield's recipe: per fold, a foreground U-Net trained on that fold's training wells
#: in front of that fold's binary-semiconv detector (so binary-semiconv must run on the same folds)
CASCADE = "brightfield-cascade"
#: the paper's ablation schedule: per fold, binary-plain's model trained --stage2-steps more,
#: plain ("-plain") and with the embedding attached fresh ("-semiconv"), identical otherwise
TWO_STAGE = "binary-twostage"
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "avS", "S50", "S60", "S70", "S80", "S90")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "napari_semiconv", *args]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--recipes",
        default="binary-semiconv,binary-plain,brightfield-semiconv",
        help="comma-separated; 'recipe:0+1' trains only folds 0 and 1 of that recipe",
    )
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--time-budget", type=float, default=300.0, help="training seconds per run")
    p.add_argument("--iterations", type=int, default=100000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--crop", type=int, default=0)
    p.add_argument("--synthetic", type=float, default=0.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--extra", default="", help="extra arguments passed to every train call")
    p.add_argument(
        "--foreground-steps", type=int, default=4000, help=f"U-Net steps per {CASCADE} fold"
    )
    p.add_argument(
        "--foreground-stage2",
        type=int,
        default=4000,
        help="then this many steps more at jitter 0.3, lr 1e-3 (the bundled recipe; 0: none)",
    )
    p.add_argument(
        "--foreground-stage3",
        type=int,
        default=3650,
        help="then this many more at jitter 0.3, lr 5e-4 (the bundled recipe; 0: none)",
    )
    p.add_argument(
        "--foreground-budget",
        type=float,
        default=0.0,
        help="seconds per fold for the three U-Net stages (35/35/30 %%) instead of the step counts",
    )
    p.add_argument(
        "--foreground-cuts",
        default="0.3,0.4,0.5,0.6,0.7",
        help=f"{CASCADE}: the U-Net cuts to choose from on each fold's training wells "
        "(empty: keep 0.5)",
    )
    p.add_argument(
        "--stage2-steps",
        type=int,
        default=1000,
        help=f"{TWO_STAGE}: steps of each arm after binary-plain's time budget",
    )
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipes = [r for r in args.recipes.split(",") if r]
    for spec in recipes:
        if spec.split(":")[0] not in (*RECIPES, CASCADE, TWO_STAGE):
            known = sorted((*RECIPES, CASCADE, TWO_STAGE))
            p.error(f"unknown recipe {spec!r}; choose from {known}")
    # recipes built on another recipe's fold models need that recipe on the same folds
    cascade_folds = _folds_of(recipes, CASCADE, args.folds)
    two_stage_folds = _folds_of(recipes, TWO_STAGE, args.folds)
    for name, needs in ((CASCADE, "binary-semiconv"), (TWO_STAGE, "binary-plain")):
        folds = _folds_of(recipes, name, args.folds)
        if set(folds) - set(_folds_of(recipes, needs, args.folds)):
            p.error(f"{name} needs {needs} on the same folds ({sorted(folds)})")

    t0 = time.time()
    procs = []
    for spec in recipes:
        r, folds = _recipe_folds(spec, args.folds)
        if r in (CASCADE, TWO_STAGE):
            continue  # needs the detectors / the plain models: trained below
        mode, semiconv = RECIPES[r]
        for fold in folds:
            length = ["--iterations", str(args.iterations), "--time-budget", str(args.time_budget)]
            procs.append(_train(args, out, r, mode, semiconv, fold, length))
    results: dict[str, list[dict]] = {}
    _collect(procs, results)
    train_s = time.time() - t0

    # the paper's schedule (sec. 4.4): each fold's plain model continued, plain or with the
    # embedding attached, for the same number of steps; all folds and both arms in parallel,
    # alongside the cascade folds below
    stage2 = ["--iterations", str(args.stage2_steps), "--warmup", "10"]
    procs = []
    for fold in two_stage_folds:
        base = ["--base", str(out / f"binary-plain.fold{fold}.pt")]
        for arm, semiconv in ((f"{TWO_STAGE}-plain", False), (f"{TWO_STAGE}-semiconv", True)):
            procs.append(_train(args, out, arm, "binary", semiconv, fold, stage2 + base))

    # the cascade folds in parallel (each a chain of subprocesses): sequential, five folds of
    # three U-Net stages would not fit a GPU session
    with ThreadPoolExecutor(max_workers=max(1, len(cascade_folds))) as pool:
        done = list(pool.map(lambda fold: _cascade_fold(args, out, fold), cascade_folds))
    for fold, res in zip(cascade_folds, done, strict=True):
        if res is not None:
            results.setdefault(CASCADE, []).append(res)
            print(f"[crossval] {CASCADE} fold {fold}: {json.dumps(res)}", flush=True)
    _collect(procs, results)

    summary = {}
    for r, rows in results.items():
        if not rows:
            continue
        summary[r] = {"folds": len(rows)}
        for m in METRICS:
            vals = [row[m] for row in rows if row.get(m) is not None]
            if vals:
                summary[r][m] = statistics.mean(vals)
                summary[r][m + "_std"] = statistics.pstdev(vals)
    report = {
        "recipes": recipes, "folds": args.folds, "backbone": args.backbone,
        "time_budget_s": args.time_budget, "batch_size": args.batch_size, "lr": args.lr,
        "train_wall_s": train_s, "total_wall_s": time.time() - t0, "summary": summary,
        "per_fold": results, "device": _device_name(), "argv": sys.argv,
    }  # fmt: skip
    (out / "crossval.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"Device: {report['device']}; backbone {args.backbone}; {args.folds}-fold CV on the "
        f"BBBC010 training wells; {args.time_budget:.0f} s of training per fold "
        f"(all runs in parallel on one device); wall {train_s / 60:.1f} min.",
        "",
        "| recipe | AP | AP50 | AP75 | APs | APm | avS | S50 | S90 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r, s in summary.items():
        cells = [f"{s.get(m, float('nan')):.3f} ± {s.get(m + '_std', 0):.3f}" for m in
                 ("AP", "AP50", "AP75", "APs", "APm", "avS", "S50", "S90")]  # fmt: skip
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    (out / "crossval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"summary": summary, "train_wall_s": train_s}))
    return 0


def _train(
    args: argparse.Namespace,
    out: Path,
    name: str,
    mode: str,
    semiconv: bool,
    fold: int,
    length: list[str],
) -> tuple[str, int, Path, subprocess.Popen]:
    """Start one (recipe, fold) training process; its checkpoint is <out>/<name>.fold<fold>.pt
    (the trainer names fold i of --out X.pt as X.fold<i>.pt)."""
    cmd = _cli(
        "train", "--data", args.data, "--layout", "bbbc010", "--input", mode,
        "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--folds", str(args.folds), "--fold", str(fold), "--device", args.device,
        "--out", str(out / f"{name}.pt"), "--checkpoint-every", "1000000",
        "--crop", str(args.crop),
    )  # fmt: skip
    if "--base" not in length:
        cmd += ["--backbone", args.backbone]
    if args.synthetic:
        cmd += ["--synthetic", str(args.synthetic)]
    if not semiconv:
        cmd.append("--no-semiconv")
    cmd += args.extra.split() + length  # the later --warmup wins
    log = open(out / f"{name}.fold{fold}.train.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    return name, fold, out / f"{name}.fold{fold}.pt", proc


def _collect(procs: list, results: dict[str, list[dict]]) -> None:
    """Wait for the training processes and add each one's held-out metrics to ``results``: the
    trainer validates on its fold's held-out wells when it stops (segment's default thresholds,
    i.e. what a user gets) and records them in the checkpoint's model card."""
    from napari_semiconv.core.checkpoint import CheckpointError, load_checkpoint

    for r, fold, _, proc in procs:
        rc = proc.wait()
        print(f"[crossval] train {r} fold {fold}: exit {rc}", flush=True)
    for r, fold, ckpt, _ in procs:
        try:
            card = load_checkpoint(ckpt).card
        except CheckpointError as exc:
            print(f"[crossval] {r} fold {fold}: {exc}", flush=True)
            continue
        res = dict(card.get("metrics") or {})
        res.update(fold=fold, steps=card.get("step"), val_wells=card["data"]["val_names"])
        results.setdefault(r, []).append(res)
        print(f"[crossval] {r} fold {fold}: {json.dumps(res)}", flush=True)


def _cascade_fold(args: argparse.Namespace, out: Path, fold: int) -> dict | None:
    """Train fold ``fold``'s foreground U-Net in front of its binary-semiconv detector and
    score the cascade on the fold's held-out wells; None (and a message) when a step fails."""
    from napari_semiconv.core.checkpoint import CheckpointError, load_checkpoint

    detector = out / f"binary-semiconv.fold{fold}.pt"
    try:
        data = load_checkpoint(detector).card["data"]
    except CheckpointError as exc:
        print(f"[crossval] {CASCADE} fold {fold}: no detector: {exc}", flush=True)
        return None
    train, held = ",".join(data["train_names"]), ",".join(data["val_names"])
    log = out / f"{CASCADE}.fold{fold}.train.log"
    # the bundled file's stages: a new U-Net, then the same further at weaker jitter, lower lr
    budget = args.foreground_budget
    lengths = (
        [["--time-budget", f"{budget * share:.0f}"] for share in (0.35, 0.35, 0.30)]
        if budget > 0
        else [["--steps", str(n)] if n else None for n in _stage_steps(args)]
    )
    stages = [(lengths[0], "2e-3", "1", ""),
              (lengths[1], "1e-3", "0.3", ".stage2"),
              (lengths[2], "5e-4", "0.3", ".stage3")]  # fmt: skip
    cascade, rc, steps = None, 0, 0
    with open(log, "w") as f:
        for length, lr, jitter, suffix in stages:
            if rc != 0 or not length:
                continue
            start = ["--foreground-from", str(cascade)] if cascade else []
            cascade = out / f"{CASCADE}.fold{fold}{suffix}.pt"
            cmd = _cli(
                "train-foreground", "--data", args.data, "--wells", train, "--val-wells", held,
                "--detector", str(detector), *start, *length, "--lr", lr,
                "--jitter", jitter, "--device", args.device, "--out", str(cascade),
            )  # fmt: skip
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
            if rc == 0:
                steps += _steps_of(cascade)
    if rc != 0 or cascade is None:
        print(f"[crossval] {CASCADE} fold {fold}: train-foreground exit {rc}, see {log}")
        return None
    cut = None
    if args.foreground_cuts:
        cascade, cut = _choose_cut(args, out, fold, cascade, train)
        if cascade is None:
            return None
    cmd = _cli("evaluate", "--model", str(cascade), "--data", args.data, "--wells", held,
               "--device", args.device, "--json")  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"[crossval] {CASCADE} fold {fold}: evaluate exit {done.returncode}: {done.stderr}")
        return None
    res = json.loads(done.stdout.strip().splitlines()[-1])
    res.update(fold=fold, steps=steps, val_wells=data["val_names"], foreground_threshold=cut)
    return res


def _choose_cut(
    args: argparse.Namespace, out: Path, fold: int, cascade: Path, train: str
) -> tuple[Path | None, float | None]:
    """The fold's cascade with its U-Net's cut chosen on the fold's training wells (the other
    thresholds at the cascade's defaults): (its file, the cut), or (None, None) on failure."""
    from napari_semiconv.core.refine import postprocess_defaults

    defaults = postprocess_defaults("cascade")
    tuned = out / f"{CASCADE}.fold{fold}.cut.pt"
    cmd = _cli(
        "tune-thresholds", "--model", str(cascade), "--data", args.data, "--wells", train,
        "--device", args.device, "--foreground-cuts", args.foreground_cuts,
        "--score-thresholds", str(defaults["score_threshold"]),
        "--mask-thresholds", str(defaults["mask_threshold"]),
        "--max-overlaps", str(defaults["max_overlap"]), "--out", str(tuned), "--json",
    )  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"[crossval] {CASCADE} fold {fold}: tune-thresholds exit {done.returncode}: "
              f"{done.stderr}")  # fmt: skip
        return None, None
    chosen = json.loads(done.stdout.strip().splitlines()[-1])
    return tuned, float(chosen["foreground_threshold"])


def _stage_steps(args: argparse.Namespace) -> list[int]:
    return [args.foreground_steps, args.foreground_stage2, args.foreground_stage3]


def _steps_of(cascade: Path) -> int:
    """The U-Net steps a train-foreground stage made (its model card), 0 if unknown."""
    from napari_semiconv.core.checkpoint import CheckpointError, load_checkpoint

    try:
        card = load_checkpoint(cascade).card
    except CheckpointError:
        return 0
    return int((card.get("foreground_training") or {}).get("steps") or 0)


def _folds_of(recipes: list[str], name: str, k: int) -> list[int]:
    """The folds the recipe ``name`` trains in ``recipes`` (none if it is not there)."""
    return [f for spec in recipes if spec.split(":")[0] == name for f in _recipe_folds(spec, k)[1]]


def _recipe_folds(spec: str, k: int) -> tuple[str, list[int]]:
    """'binary-plain' -> all k folds; 'brightfield-semiconv:0' -> fold 0 only."""
    name, _, folds = spec.partition(":")
    return name, [int(f) for f in folds.split("+")] if folds else list(range(k))


def _device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return f"cpu ({os.cpu_count()} cores)"


if __name__ == "__main__":
    sys.exit(main())
