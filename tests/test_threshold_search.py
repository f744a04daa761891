"""Choosing a model's thresholds on annotated images: core.threshold_search, the card's own
defaults (core.refine.postprocess_defaults_of) and `napari-semiconv tune-thresholds`."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_semiconv.cli.main import main
from napari_semiconv.core.checkpoint import load_checkpoint
from napari_semiconv.core.data.sample import Sample
from napari_semiconv.core.evaluation import evaluate
from napari_semiconv.core.foreground_training import cascade_card
from napari_semiconv.core.inference import load_model, segment
from napari_semiconv.core.measurements import labels_from_instances
from napari_semiconv.core.preprocess import normalise
from napari_semiconv.core.refine import postprocess_defaults, postprocess_defaults_of
from napari_semiconv.core.synthetic.worms import synthetic_worms
from napari_semiconv.core.threshold_search import (
    best_setting,
    search_thresholds,
    with_thresholds,
)

KEYS = ("score_threshold", "mask_threshold", "max_overlap")


@pytest.fixture(scope="module")
def binary_model():
    return load_model("worms-binary", device="cpu")


@pytest.fixture(scope="module")
def samples():
    out = []
    for seed in (3, 4):
        image, masks = synthetic_worms(seed=seed, render="binary")
        out.append(Sample(normalise(image, "binary"), masks, f"synthetic{seed}"))
    return out


def test_every_setting_is_what_segment_gives_with_it(binary_model, samples):
    rows = search_thresholds(binary_model, samples, (0.5, 0.7), (0.3, 0.5), (0.3, 1.0))
    assert len(rows) == 2 * 2 * 2
    assert {(r["score_threshold"], r["mask_threshold"], r["max_overlap"]) for r in rows} == {
        (s, m, o) for s in (0.5, 0.7) for m in (0.3, 0.5) for o in (0.3, 1.0)
    }
    # the scores differ between settings, so the choice means something
    assert len({round(r["avS"], 6) for r in rows}) > 1
    for row in (rows[0], rows[-1]):
        setting = {k: row[k] for k in KEYS}
        preds = [segment(binary_model, s.image, preprocessed=True, **setting) for s in samples]
        summary = evaluate(
            [(p.masks, p.scores) for p in preds], [s.masks for s in samples], per_image_ap=False
        ).summary
        assert row["avS"] == pytest.approx(summary["avS"])
        assert row["AP"] == pytest.approx(summary["AP"])
        assert row["n_pred"] == sum(len(p) for p in preds)
    best = best_setting(rows, "avS")
    assert best["avS"] == max(r["avS"] for r in rows)
    assert best_setting(rows, "AP")["AP"] == max(r["AP"] for r in rows)


def test_bad_searches_are_refused(binary_model, samples):
    with pytest.raises(ValueError, match="no annotated images"):
        search_thresholds(binary_model, [])
    with pytest.raises(ValueError, match=r"score thresholds must be in \[0, 1\]"):
        search_thresholds(binary_model, samples, score_thresholds=(0.5, 1.5))
    with pytest.raises(ValueError, match="at least one value"):
        search_thresholds(binary_model, samples, max_overlaps=())
    with pytest.raises(ValueError, match="one of"):
        best_setting([{"avS": 0.5}], "F1")
    with pytest.raises(ValueError, match="no setting has a avS"):
        best_setting([{"avS": None}], "avS")


def test_a_cards_thresholds_are_the_models_defaults():
    kind = postprocess_defaults("binary")
    own = {"score_threshold": 0.65, "mask_threshold": 0.45, "max_overlap": 0.25}
    card = with_thresholds({"name": "x"}, {**own, "avS": 0.7}, "avS", ["a.tif"])
    assert card["postprocess"]["images"] == ["a.tif"] and card["name"] == "x"
    assert postprocess_defaults_of("binary", card) == own
    assert postprocess_defaults_of("binary", None) == kind
    # a damaged entry is ignored, not half used
    for bad in ({**own, "max_overlap": 1.5}, {**own, "score_threshold": "0.6"}, {"x": 1}, [0.5]):
        assert postprocess_defaults_of("binary", {"postprocess": bad}) == kind
    # a detector's thresholds are not its cascade's: they move under detector_postprocess
    moved = cascade_card(card)
    assert "postprocess" not in moved and moved["detector_postprocess"] == card["postprocess"]


def _write_folders(root, seeds):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for seed in seeds:
        image, masks = synthetic_worms(seed=seed, render="binary")
        tifffile.imwrite(root / "images" / f"well{seed}.tif", image)
        tifffile.imwrite(root / "labels" / f"well{seed}.tif", labels_from_instances(masks))
    return root


def test_tune_thresholds_writes_a_model_that_uses_them(tmp_path, capsys):
    data = _write_folders(tmp_path / "data", (3, 4))
    out = tmp_path / "tuned.pt"
    args = ["tune-thresholds", "--model", "worms-binary", "--data", str(data), "--layout",
            "folders", "--out", str(out), "--device", "cpu", "--score-thresholds", "0.5,0.8",
            "--mask-thresholds", "0.3", "--max-overlaps", "0.3,1"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "best by avS" in printed and "2 annotated image(s)" in printed
    ckpt = load_checkpoint(out)
    chosen = {k: ckpt.card["postprocess"][k] for k in KEYS}
    assert ckpt.half  # the bundled fp16 weights stay fp16
    assert ckpt.card["postprocess"]["images"] == ["well3", "well4"]
    assert chosen["score_threshold"] in (0.5, 0.8) and chosen["max_overlap"] in (0.3, 1.0)
    tuned = load_model(out, device="cpu")
    image = tifffile.imread(data / "images" / "well3.tif")
    by_default, explicit = segment(tuned, image), segment(tuned, image, **chosen)
    np.testing.assert_array_equal(by_default.masks, explicit.masks)
    # never overwritten; a wrong input mode is refused before any work
    before = out.stat().st_mtime_ns
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err and out.stat().st_mtime_ns == before
    assert main([*args[:-8], "--out", str(tmp_path / "b.pt"), "--input", "brightfield"]) == 2
    assert "does not match" in capsys.readouterr().err and not (tmp_path / "b.pt").exists()


def test_a_tiled_image_is_scored_as_segment_tiles_it(binary_model):
    # over 1024 px a side the image is cut into tiles; the worms cut by a tile edge merge among
    # the detections kept, so each score threshold gets its own pass: still segment's result
    image, masks = synthetic_worms(seed=5, shape=(300, 1100), render="binary")
    sample = Sample(normalise(image, "binary"), masks, "wide")
    rows = search_thresholds(binary_model, [sample], (0.3, 0.6), (0.3,), (0.3,))
    assert len(rows) == 2 and min(r["n_pred"] for r in rows) > 1
    for row in rows:
        setting = {k: row[k] for k in KEYS}
        found = segment(binary_model, sample.image, preprocessed=True, **setting)
        summary = evaluate([(found.masks, found.scores)], [masks], per_image_ap=False).summary
        assert row["avS"] == pytest.approx(summary["avS"]) and row["n_pred"] == len(found)


@pytest.fixture(scope="module")
def cascade_model():
    return load_model("worms-brightfield", device="cpu")


def _brightfield_samples(seeds=(3, 4)) -> list[Sample]:
    out = []
    for seed in seeds:
        image, masks = synthetic_worms(seed=seed, render="brightfield")
        out.append(Sample(normalise(image, "brightfield"), masks, f"bf{seed}"))
    return out


def test_a_cascades_cut_is_searched_as_segment_runs_it(cascade_model):
    samples = _brightfield_samples((3,))
    own = cascade_model.config.foreground_threshold
    seen = []
    rows = search_thresholds(
        cascade_model, samples, (0.7,), (0.4,), (0.3,), foreground_cuts=(0.3, 0.8),
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert [r["foreground_threshold"] for r in rows] == [0.3, 0.8]
    assert seen == [(1, 2), (2, 2)]  # one pass per cut, counted on across cuts
    assert cascade_model.config.foreground_threshold == own  # restored
    # the cuts change what the detector sees, so the rows differ...
    assert rows[0]["n_pred"] != rows[1]["n_pred"] or rows[0]["avS"] != rows[1]["avS"]
    # ...and each is segment's result with the model at that cut
    for row in rows:
        cascade_model.config.foreground_threshold = row["foreground_threshold"]
        try:
            found = segment(cascade_model, samples[0].image, preprocessed=True)
        finally:
            cascade_model.config.foreground_threshold = own
        summary = evaluate(
            [(found.masks, found.scores)], [samples[0].masks], per_image_ap=False
        ).summary
        assert row["avS"] == pytest.approx(summary["avS"]) and row["n_pred"] == len(found)
    # without cuts, the model's own cut only
    plain = search_thresholds(cascade_model, samples, (0.7,), (0.4,), (0.3,))
    assert [r["foreground_threshold"] for r in plain] == [own]
    with pytest.raises(ValueError, match=r"foreground cuts must be in \(0, 1\)"):
        search_thresholds(cascade_model, samples, foreground_cuts=(0.5, 1.0))
    assert cascade_model.config.foreground_threshold == own


def test_only_a_cascade_has_a_cut_to_search(binary_model, samples):
    with pytest.raises(ValueError, match="only a bright-field cascade"):
        search_thresholds(binary_model, samples, foreground_cuts=(0.5,))
    rows = search_thresholds(binary_model, samples[:1], (0.5,), (0.3,), (0.3,))
    assert "foreground_threshold" not in rows[0]


def test_tune_thresholds_gives_a_cascade_copy_its_chosen_cut(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for seed in (3, 4):
        image, masks = synthetic_worms(seed=seed, render="brightfield")
        tifffile.imwrite(root / "images" / f"well{seed}.tif", image)
        tifffile.imwrite(root / "labels" / f"well{seed}.tif", labels_from_instances(masks))
    out = tmp_path / "tuned.pt"
    grid = ["--data", str(root), "--layout", "folders", "--device", "cpu", "--score-thresholds",
            "0.7", "--mask-thresholds", "0.4", "--max-overlaps", "0.3", "--foreground-cuts",
            "0.3,0.8"]  # fmt: skip
    assert main(["tune-thresholds", "--model", "worms-brightfield", "--out", str(out), *grid]) == 0
    printed = capsys.readouterr().out
    assert "'foreground_threshold': 0.6" in printed  # the defaults now, before the search
    ckpt = load_checkpoint(out)
    cut = ckpt.config.foreground_threshold
    assert cut in (0.3, 0.8) and ckpt.card["postprocess"]["foreground_threshold"] == cut
    assert f"> {cut:g} is the detector's binary input" in ckpt.card["normalisation"]
    # the copy segments at its cut by default
    tuned = load_model(out, device="cpu")
    image = tifffile.imread(root / "images" / "well3.tif")
    bundled = load_model("worms-brightfield", device="cpu")
    bundled.config.foreground_threshold = cut
    np.testing.assert_array_equal(segment(tuned, image).masks, segment(bundled, image).masks)
    # cuts for a model without a U-Net are refused before any work
    refused = tmp_path / "b.pt"
    assert main(["tune-thresholds", "--model", "worms-binary", "--out", str(refused), *grid]) == 2
    assert "only a bright-field cascade" in capsys.readouterr().err
    assert not refused.exists()


def test_choose_thresholds_scores_at_the_size_segment_shows_the_network():
    # the Segment widget's Rescale resizes the image before the network; Choose thresholds
    # scored at the image's own size whatever Rescale said
    from napari_semiconv.plugin._tune_worker import TuneRequest, _sample

    image, masks = synthetic_worms(seed=5, shape=(200, 240), render="brightfield")
    labels = np.zeros(masks.shape[1:], np.int32)
    for k, mask in enumerate(masks, start=1):
        labels[mask] = k
    current = {"score_threshold": 0.5, "mask_threshold": 0.5, "max_overlap": 0.5}
    request = TuneRequest("img", "lab", image, labels, "m", "cpu", current, rescale=0.5)
    sample = _sample(request, "brightfield")
    assert sample.image.shape == (100, 120) and sample.masks.shape[1:] == (100, 120)
    assert len(sample.masks) == len(np.unique(labels)) - 1
    plain = _sample(TuneRequest("img", "lab", image, labels, "m", "cpu", current), "brightfield")
    assert plain.image.shape == (200, 240)
