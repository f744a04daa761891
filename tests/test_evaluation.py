"""COCO mask AP and PatchPerPix S on hand-made cases whose numbers are computed by hand."""

import math

import numpy as np
import pytest

from napari_semiconv.core.evaluation import S_THRESHOLDS, evaluate, iou_matrix, match_score

H, W = 64, 80


def rect(y0, x0, y1, x1):
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def four_worms():
    # Thin, separate "worms" of 6 x 30 = 180 px (COCO "small": area < 32**2).
    return np.stack([rect(4 + 14 * k, 5, 10 + 14 * k, 35) for k in range(4)])


def test_perfect_prediction_scores_one():
    truth = four_worms()
    result = evaluate([(truth.copy(), np.array([0.9, 0.8, 0.7, 0.6]))], [truth])
    s = result.summary
    assert s["AP"] == pytest.approx(1.0)
    assert s["AP50"] == pytest.approx(1.0) and s["AP75"] == pytest.approx(1.0)
    assert s["APs"] == pytest.approx(1.0)
    # No medium or large worms: pycocotools' -1 becomes None.
    assert s["APm"] is None and s["APl"] is None
    assert s["avS"] == 1.0 and all(s[f"S{t}"] == 1.0 for t in (50, 60, 70, 80, 90))
    assert s["n_images"] == 1
    assert list(s) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "avS",
                       "S50", "S60", "S70", "S80", "S90", "n_images"]  # fmt: skip
    row = result.per_image[0]
    assert row["n_true"] == 4 and row["n_pred"] == 4 and row["AP"] == pytest.approx(1.0)


def test_missed_worm_lowers_scores_as_computed_by_hand():
    truth = four_worms()
    result = evaluate([(truth[:3].copy(), np.array([0.9, 0.8, 0.7]))], [truth])
    s = result.summary
    # S: TP 3, FP 0, FN 1 -> 3/4 at every threshold.
    for t in (50, 60, 70, 80, 90):
        assert s[f"S{t}"] == pytest.approx(0.75)
    assert s["avS"] == pytest.approx(0.75)
    # COCO AP: precision is 1 at recalls 1/4, 2/4, 3/4 and recall never exceeds 3/4. COCO samples
    # precision at the 101 recall points 0, 0.01, ..., 1: the 76 points 0 .. 0.75 get precision
    # 1, the 25 points 0.76 .. 1 get 0. Same at every IoU threshold: AP = 76/101.
    assert s["AP"] == pytest.approx(76 / 101)
    assert s["AP50"] == pytest.approx(76 / 101) and s["AP75"] == pytest.approx(76 / 101)


def test_false_positive_with_lower_score_keeps_ap_but_lowers_s():
    truth = four_worms()
    fp = rect(50, 50, 60, 75)[None]  # on background, scored below every true positive
    masks = np.concatenate([truth[:3], fp])
    result = evaluate([(masks, np.array([0.9, 0.8, 0.7, 0.1]))], [truth])
    s = result.summary
    # Ranked after all hits, the FP changes no precision at recall <= 3/4: AP stays 76/101.
    assert s["AP"] == pytest.approx(76 / 101)
    # S = TP / (TP + FP + FN) = 3 / (3 + 1 + 1).
    assert s["avS"] == pytest.approx(3 / 5)


def test_false_positive_with_higher_score_lowers_ap():
    truth = four_worms()
    fp = rect(50, 50, 60, 75)[None]
    masks = np.concatenate([fp, truth[:3]])
    result = evaluate([(masks, np.array([0.95, 0.9, 0.8, 0.7]))], [truth])
    # Precision after each detection: 0/1, 1/2, 2/3, 3/4 at recall 0, 1/4, 2/4, 3/4; COCO takes
    # the best precision at recall >= r, i.e. 3/4 for every r <= 0.75: AP = 0.75 * 76/101.
    assert result.summary["AP"] == pytest.approx(0.75 * 76 / 101)
    assert result.summary["avS"] == pytest.approx(3 / 5)


def test_partial_overlap_counts_only_at_low_thresholds():
    truth = rect(10, 10, 20, 20)[None]  # 100 px
    pred = np.zeros_like(truth)
    pred[0, 10:20, 10:17] = True
    pred[0, 10:12, 17:18] = True  # 72 px, all inside: IoU 0.72
    assert iou_matrix(pred, truth)[0, 0] == pytest.approx(0.72)
    result = evaluate([(pred, np.array([0.5]))], [truth])
    s = result.summary
    assert [s[k] for k in ("S50", "S60", "S70", "S80", "S90")] == [1, 1, 1, 0, 0]
    assert s["avS"] == pytest.approx(0.6)
    # Matched at IoU thresholds 0.50, 0.55, 0.60, 0.65, 0.70 (5 of 10) with AP 1 each, else 0.
    assert s["AP"] == pytest.approx(0.5)
    assert s["AP50"] == pytest.approx(1.0) and s["AP75"] == pytest.approx(0.0)


def test_overlapping_ground_truth_instances_are_kept():
    # Two worms crossing: in a label image one would lose the crossing pixels.
    a = rect(20, 5, 26, 75)
    b = rect(5, 37, 60, 43)
    truth = np.stack([a, b])
    result = evaluate([(truth.copy(), np.array([0.9, 0.8]))], [truth])
    assert result.summary["AP"] == pytest.approx(1.0)
    assert result.summary["avS"] == pytest.approx(1.0)
    # Predicting the crossing pixels for only one of them is slightly worse at high IoU.
    b_cut = b & ~a
    result = evaluate([(np.stack([a, b_cut]), np.array([0.9, 0.8]))], [truth])
    iou_b = b_cut.sum() / b.sum()
    assert iou_matrix(b_cut[None], b[None])[0, 0] == pytest.approx(iou_b)
    expected = np.mean([(1 + (iou_b >= t)) / (2 + 2 - (1 + (iou_b >= t))) for t in S_THRESHOLDS])
    assert result.summary["avS"] == pytest.approx(expected)


def test_per_image_average_and_image_without_predictions():
    truth = four_worms()
    result = evaluate(
        [(truth.copy(), np.ones(4)), (np.zeros((0, H, W), bool), np.zeros(0))],
        [truth, truth],
        names=["good", "empty"],
    )
    good, empty = result.per_image
    assert good["name"] == "good" and good["avS"] == 1.0 and good["AP"] == pytest.approx(1.0)
    assert empty["n_pred"] == 0 and empty["avS"] == 0.0 and empty["AP"] == pytest.approx(0.0)
    assert result.summary["avS"] == pytest.approx(0.5)
    # Pooled COCO AP: 4 of 8 worms found at precision 1 -> 51 of 101 recall points.
    assert result.summary["AP"] == pytest.approx(51 / 101)
    assert result.summary["n_images"] == 2


def test_image_without_truth_or_predictions_scores_one_and_fp_only_scores_zero():
    truth = four_worms()
    none = np.zeros((0, H, W), bool)
    result = evaluate(
        [(truth, np.ones(4)), (none, np.zeros(0)), (truth[:1], np.ones(1))],
        [truth, none, none],
    )
    assert [r["avS"] for r in result.per_image] == [1.0, 1.0, 0.0]
    assert result.per_image[1]["AP"] is None


def test_per_image_ap_matches_pooled_ap_for_one_image():
    rng = np.random.default_rng(0)
    truth = four_worms()
    pred = truth.copy()
    pred[:, :, 30:35] = False  # shorter predictions: IoU 25/30
    result = evaluate([(pred, rng.random(4))], [truth])
    assert result.per_image[0]["AP"] == pytest.approx(result.summary["AP"])
    assert 0.0 < result.summary["AP"] < 1.0


def test_match_score_prefers_more_matches_over_total_iou():
    # Rows: predictions, columns: truths. Maximising total IoU picks (0,1) (1,0) (2,2) = 1.85 with
    # one pair >= 0.5; the matching with two pairs >= 0.5 is (0,0) (1,1) (2,2) = 1.45.
    iou = np.array([[0.5, 0.95, 0.0], [0.45, 0.5, 0.0], [0.0, 0.0, 0.45]])
    assert match_score(iou, 0.5) == pytest.approx(2 / (3 + 3 - 2))
    assert match_score(iou, 0.9) == pytest.approx(1 / (3 + 3 - 1))
    assert match_score(np.zeros((0, 0)), 0.5) == 1.0
    assert match_score(np.zeros((2, 0)), 0.5) == 0.0


def test_bad_inputs_raise_clear_errors():
    truth = four_worms()
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate([], [])
    with pytest.raises(ValueError, match="truths for 2"):
        evaluate([(truth, np.ones(4))], [truth, truth])
    with pytest.raises(ValueError, match="ground truth's size"):
        evaluate([(truth[:, :32], np.ones(4))], [truth])
    with pytest.raises(ValueError, match="scores"):
        evaluate([(truth, np.ones(3))], [truth])
    with pytest.raises(ValueError, match="no ground-truth instance"):
        evaluate([(truth, np.ones(4))], [np.zeros((0, H, W), bool)])
    with pytest.raises(TypeError, match="threshold"):
        evaluate([(truth.astype(np.float32), np.ones(4))], [truth])
    with pytest.raises(ValueError, match="NaN"):
        evaluate([(truth, np.array([1, 1, math.nan, 1]))], [truth])


def test_accepts_objects_with_masks_and_scores():
    class Inst:
        def __init__(self, masks, scores):
            self.masks, self.scores = masks, scores

    truth = four_worms()
    result = evaluate([Inst(truth, np.ones(4, np.float32))], [truth])
    assert result.summary["AP"] == pytest.approx(1.0)
    assert "AP 1.000" in result.format()


def _bbbc010_truth(root, well="A01"):
    from skimage.io import imread

    files = sorted((root / "eachworm").glob(f"{well}_*_ground_truth.png"))
    masks = np.stack([np.asarray(imread(f)) > 0 for f in files])
    return masks[..., 0] if masks.ndim == 4 else masks


def test_real_bbbc010_ground_truth_with_overlaps(bbbc010_root):
    truth = _bbbc010_truth(bbbc010_root)
    n = truth.shape[0]
    assert (truth.sum(0) > 1).any(), "A01 has touching/crossing worms"
    perfect = evaluate([(truth, np.ones(n))], [truth])
    assert perfect.summary["AP"] == pytest.approx(1.0) and perfect.summary["avS"] == 1.0
    # One worm missed: S = (n-1)/n; AP = share of the 101 recall points <= (n-1)/n.
    missed = evaluate([(truth[1:], np.ones(n - 1))], [truth])
    assert missed.summary["avS"] == pytest.approx((n - 1) / n)
    points = np.linspace(0, 1, 101)
    assert missed.summary["AP"] == pytest.approx(np.mean(points <= (n - 1) / n + 1e-9))


def many_worms(n: int) -> np.ndarray:
    """n separate 2 x 6 px worms on a 240 x 240 image (at most 30 x 30 of them)."""
    masks = np.zeros((n, 240, 240), dtype=bool)
    for k in range(n):
        y, x = 8 * (k // 30), 8 * (k % 30)
        masks[k, y : y + 2, x : x + 6] = True
    return masks


def test_an_image_with_more_than_100_worms_found_perfectly_scores_ap_one():
    # COCO's cap of 100 detections per image gave 150 perfect worms AP 0.66 (recall 100/150).
    truth = many_worms(150)
    scores = np.linspace(0.99, 0.5, 150)
    result = evaluate([(truth.copy(), scores)], [truth])
    assert result.summary["AP"] == pytest.approx(1.0)
    assert result.summary["AP50"] == pytest.approx(1.0)
    assert result.per_image[0]["AP"] == pytest.approx(1.0)
    # Only 100 of the 150 found: recall 2/3 caps AP at 67/101 (precision 1 up to recall 0.66).
    half = evaluate([(truth[:100].copy(), scores[:100])], [truth])
    assert half.summary["AP"] == pytest.approx(67 / 101)


def test_summary_equals_pycocotools_summarize_up_to_100_detections():
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from napari_semiconv.core.evaluation import _coco_dataset

    rng = np.random.default_rng(0)
    truth = many_worms(40)
    pred = truth[rng.permutation(40)[:30]].copy()
    pred[:, :, 1:] |= pred[:, :, :-1]  # one pixel wider: IoU 12/14
    pred = np.concatenate([pred, many_worms(60)[40:]])  # 20 false positives
    scores = rng.random(len(pred))
    result = evaluate([(pred, scores)], [truth])
    gt = _coco_dataset([truth], [truth.shape[1:]])
    dt = _coco_dataset([pred], [truth.shape[1:]], [scores])
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for key, value in zip(("AP", "AP50", "AP75", "APs"), ev.stats[:4], strict=True):
        assert result.summary[key] == pytest.approx(float(value)), key
    assert 0.1 < result.summary["AP"] < 0.9
