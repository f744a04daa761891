"""core.worm_size and segment's word when the worms found are far from the model's size."""

import warnings

import numpy as np

from napari_semiconv.core.worm_size import (
    TYPICAL_WORM_AREA,
    learnt_worm_area,
    size_warning,
    worm_area_record,
)


def test_the_median_worm_area_goes_into_a_record():
    masks = np.zeros((3, 20, 20), bool)
    masks[0, :2, :5] = True  # 10 px
    masks[1, :4, :5] = True  # 20 px
    masks[2, :6, :5] = True  # 30 px
    empty = np.zeros((0, 20, 20), bool)
    assert worm_area_record([masks, empty, masks[:1]]) == {"median": 15.0, "n": 4}  # 10 10 20 30
    assert worm_area_record([empty]) is None and worm_area_record([]) is None


def test_a_model_learnt_its_cards_area_else_bbbc010s():
    assert learnt_worm_area({"worm_area": {"median": 250.0, "n": 40}}) == 250.0
    for card in (None, {}, {"worm_area": None}, {"worm_area": {"median": -1}}, {"worm_area": 3}):
        assert learnt_worm_area(card) == TYPICAL_WORM_AREA


def test_sizes_far_from_the_models_are_named_near_ones_are_not():
    assert size_warning(np.full(20, 1000), 1001.0, "brightfield") is None
    assert size_warning(np.full(20, 450), 1001.0, "brightfield") is None  # 0.45: larvae are worms
    small = size_warning(np.full(20, 60), 1001.0, "brightfield")
    assert "smaller" in small and "median 60 px against 1001 px" in small
    assert "inverted" in small and "dark worms in a bright well" in small and "Rescale" in small
    large = size_warning(np.full(6, 2000), 1001.0, "binary")
    assert "larger" in large and "Rescale below 1" in large and "foreground mask" in large
    # four worms say too little; empty masks do not count
    assert size_warning(np.array([60, 60, 60, 60, 0, 0]), 1001.0, "brightfield") is None


def _size_words(model, image, **kwargs) -> list[str]:
    from napari_semiconv.core.inference import segment

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        segment(model, image, **kwargs)
    return [str(w.message) for w in caught if "this model learnt" in str(w.message)]


def test_an_inverted_image_or_another_channel_is_named_on_real_wells(bbbc010_root):
    import tifffile

    from napari_semiconv.core.model_store import load_model

    def channel(well: str, w: str) -> np.ndarray:
        return tifffile.imread(next((bbbc010_root / "images").glob(f"*_{well}_{w}_*.tif")))

    model = load_model("worms-brightfield", device="cpu")
    image = channel("A02", "w2")
    assert _size_words(model, image) == []  # the bright-field image the model expects
    inverted = _size_words(model, image.max() - image)
    assert len(inverted) == 1 and "smaller" in inverted[0]  # 42 worms of median 67 px
    # a step of its own, as far on as the work (a progress bar stays full)
    from napari_semiconv.core.inference import segment_steps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        events = list(segment_steps(model, image.max() - image))
    assert events[-1].warning and "this model learnt" in events[-1].message
    assert events[-1].done == events[-1].total == events[-2].total > 0
    assert len(_size_words(model, channel("B12", "w1"))) == 1  # fluorescence: 54 of 104 px
    # the same well enlarged twice, then shrunk back by Rescale: the sizes the network saw
    import torch

    twice = torch.nn.functional.interpolate(
        torch.from_numpy(image.astype(np.float32))[None, None], scale_factor=2, mode="bilinear"
    )[0, 0].numpy()
    assert len(_size_words(model, twice)) == 1
    assert _size_words(model, twice, rescale=0.5) == []
