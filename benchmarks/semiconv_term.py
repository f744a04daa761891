"""How much a trained semi-conv model's masks owe to eq. 10's term: the same weights evaluated
with and without −‖Ψ_u − Ψ_s‖/σ added to the mask logits.

Not the paper's ablation (a plain Mask R-CNN trained with the same recipe, see
`ablation_two_stage.sh`): the mask head here was trained with the term, so switching it off
shows what the model relies on, not what plain training would reach.

    python benchmarks/semiconv_term.py --model worms-binary --data ../shared/data/bbbc010/train \
        --wells A02,A04,A08,A10,A19,B06,B12,B15,B22,C01 --threads 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from napari_semiconv.core.evaluation import evaluate
from napari_semiconv.core.inference import load_model, segment
from napari_semiconv.core.training_data import read_samples

KEYS = ("AP", "AP50", "AP75", "avS", "S50", "S90")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a semi-conv model (name or checkpoint)")
    p.add_argument("--data", required=True, help="BBBC010 folder (images/, eachworm/)")
    p.add_argument("--wells", required=True, help="comma-separated wells")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json-out", help="write both rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    if not model.config.semiconv:
        raise SystemExit(f"{args.model} is a plain Mask R-CNN: it has no semi-conv term")
    samples = read_samples(args.data, "bbbc010", model.config.input_mode, args.wells.split(","))
    rows = []
    for term in (True, False):
        # SemiConvRoIHeads runs torchvision's mask branch unchanged when semiconv is False
        model.roi_heads.semiconv = term
        predictions = [segment(model, s.image, preprocessed=True) for s in samples]
        result = evaluate(predictions, [s.masks for s in samples])
        rows.append({"semiconv_term": term, **{k: float(result.summary[k]) for k in KEYS}})
        print(json.dumps(rows[-1]), flush=True)
    if args.json_out:
        out = {"model": args.model, "wells": args.wells.split(","), "rows": rows}
        Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
