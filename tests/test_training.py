"""The trainer on tiny data: losses, atomic checkpoints, exact resume, cancel, baseline, NaN."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from toy_worms import tiny_model_config, toy_worms

from napari_semiconv.core.checkpoint import load_checkpoint, model_from_checkpoint
from napari_semiconv.core.data.sample import Sample
from napari_semiconv.core.training import (
    TrainConfig,
    TrainingDiverged,
    best_path,
    lr_factor,
    train,
)
from napari_semiconv.core.training_data import batch_indices, kfold_split, well_of
from napari_semiconv.core.worm_size import worm_area_record


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    out = []
    for i in range(3):
        image, masks = toy_worms((112, 112), n=3, seed=10 + i)
        out.append(Sample(image=image, masks=masks, name=f"toy_A0{i + 1}"))
    return out


def _config(samples, tmp_path, **kw) -> TrainConfig:
    options = dict(
        model=tiny_model_config(),
        samples=samples,
        iterations=3,
        batch_size=1,
        lr=0.01,
        warmup_iters=2,
        crop=64,
        device="cpu",
        checkpoint_every=2,
        out=str(tmp_path / "model.pt"),
    )
    options.update(kw)
    return TrainConfig(**options)


def _train_losses(events) -> dict[int, float]:
    return {e.iteration: e.losses["loss"] for e in events if e.phase == "train" and e.losses}


def test_train_reports_losses_and_writes_checkpoints(samples, tmp_path):
    events = list(train(_config(samples, tmp_path)))
    steps = [e for e in events if e.phase == "train" and e.losses]
    assert [e.iteration for e in steps] == [1, 2, 3]
    for e in steps:
        assert {"loss", "loss_mask", "loss_embedding", "loss_kernel"} <= set(e.losses)
        assert all(math.isfinite(v) for v in e.losses.values())
        assert e.total == 3 and e.images_per_s > 0 and e.eta_s >= 0
    saved = [e.iteration for e in events if e.phase == "checkpoint"]
    assert saved == [2, 3]
    assert events[-1].phase == "done"
    # only the checkpoint is left in the folder: no temporary files of the atomic writer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt.train_state["step"] == 3
    assert ckpt.card["recipe"]["iterations"] == 3 and ckpt.card["input_mode"] == "binary"
    # the size of its worms, which segment compares the worms it finds with (core.worm_size)
    assert ckpt.card["worm_area"] == worm_area_record(s.masks for s in samples)
    model = model_from_checkpoint(ckpt)
    assert model.config == tiny_model_config()
    # the trained model is handed over at the end, ready to use
    assert events[-1].model is not None and not events[-1].model.training


def test_existing_output_is_not_overwritten(samples, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="resume"):
        list(train(_config(samples, tmp_path)))
    assert (tmp_path / "model.pt").read_bytes() == b"precious"


def test_resume_after_cancel_continues_exactly(samples, tmp_path):
    whole = list(train(_config(samples, tmp_path / "a", iterations=3)))
    cfg = _config(samples, tmp_path / "b", iterations=3)
    run = train(cfg)
    first = []
    for event in run:
        first.append(event)
        if event.phase == "checkpoint" and event.iteration == 2:
            break
    run.close()  # cancel: the step-2 checkpoint stays valid
    ckpt = load_checkpoint(cfg.out)
    assert ckpt.train_state["step"] == 2
    rest = list(train(dataclasses.replace(cfg, resume=True)))
    assert rest[0].message.startswith("resumed")
    resumed = {**_train_losses(first), **_train_losses(rest)}
    expected = _train_losses(whole)
    assert sorted(resumed) == [1, 2, 3]
    for step in (1, 2, 3):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5), step
    a = load_checkpoint(tmp_path / "a" / "model.pt").state_dict
    b = load_checkpoint(cfg.out).state_dict
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_cpu_bf16_autocast_trains_and_can_be_turned_off(samples, tmp_path, monkeypatch):
    import napari_semiconv.core.training as training

    # as on a CPU with native bf16 (AMX / AVX512-BF16), whatever this machine has
    monkeypatch.setattr(training, "bf16_autocast_pays", lambda device: True)
    fp32 = _train_losses(train(_config(samples, tmp_path / "a", amp=False)))
    bf16 = _train_losses(train(_config(samples, tmp_path / "b", amp=True)))
    assert set(bf16) == set(fp32) and all(math.isfinite(v) for v in bf16.values())
    # the first step (same weights, same batch) agrees to bf16 precision and is not identical:
    # the autocast really ran
    assert bf16[1] == pytest.approx(fp32[1], rel=0.05) and bf16[1] != fp32[1]
    # without native bf16 the CPU keeps float32 even with amp on
    monkeypatch.setattr(training, "bf16_autocast_pays", lambda device: False)
    assert _train_losses(train(_config(samples, tmp_path / "c", amp=True))) == fp32


def test_data_workers_give_the_same_run_and_stop_when_cancelled(samples, tmp_path):
    import multiprocessing

    inline = _train_losses(
        train(_config(samples, tmp_path / "a", iterations=4, synthetic_fraction=0.5))
    )
    cfg = _config(samples, tmp_path / "b", iterations=4, synthetic_fraction=0.5, data_workers=2)
    assert _train_losses(train(cfg)) == pytest.approx(inline, rel=1e-6)
    # cancelling mid-run leaves no worker process behind
    run = train(_config(samples, tmp_path / "c", iterations=50, data_workers=2))
    for event in run:
        if event.iteration == 2:
            break
    assert multiprocessing.active_children()
    run.close()
    assert not multiprocessing.active_children()


def test_time_budget_stops_the_run_and_bounds_the_eta(samples, tmp_path):
    events = list(train(_config(samples, tmp_path, iterations=1000, time_budget_s=1e-3)))
    steps = [e for e in events if e.phase == "train" and e.losses]
    # the budget is spent after the first step: it is validated, checkpointed and the run ends
    assert [e.iteration for e in steps] == [1] and steps[0].total == 1
    assert steps[0].eta_s == 0.0
    assert load_checkpoint(tmp_path / "model.pt").train_state["step"] == 1
    assert events[-1].phase == "done"


def test_data_workers_must_not_be_negative(samples, tmp_path):
    with pytest.raises(ValueError, match="data_workers"):
        list(train(_config(samples, tmp_path, data_workers=-1)))


def test_baseline_then_two_stage_semiconv(samples, tmp_path):
    base_cfg = _config(
        samples, tmp_path, model=tiny_model_config(semiconv=False), iterations=1,
        out=str(tmp_path / "base.pt"),
    )  # fmt: skip
    events = list(train(base_cfg))
    losses = _train_losses(events)[1]
    assert "loss_embedding" not in events[1].losses and math.isfinite(losses)
    stage2 = _config(samples, tmp_path, iterations=1, base=str(tmp_path / "base.pt"))
    events = list(train(stage2))
    assert "two-stage" in events[0].message
    assert "loss_embedding" in events[1].losses


def test_plain_from_a_semiconv_checkpoint(samples, tmp_path):
    # the ablation's plain arm: a semi-conv model's weights without its embedding head and σ
    events = list(train(_config(samples, tmp_path, iterations=1, out=str(tmp_path / "sc.pt"))))
    assert "loss_embedding" in events[1].losses
    plain = _config(
        samples, tmp_path, model=tiny_model_config(semiconv=False), iterations=1,
        base=str(tmp_path / "sc.pt"), out=str(tmp_path / "plain.pt"),
    )  # fmt: skip
    events = list(train(plain))
    assert "semi-conv tensors left out" in events[0].message
    assert "loss_embedding" not in events[1].losses
    assert not any(k.startswith("embedding_head.") for k in events[-1].model.state_dict())


def test_heads_only_leaves_backbone_untouched(samples, tmp_path):
    # a worm-free image in the data is a valid negative example, augmented or not
    empty = Sample(np.zeros((112, 112), np.float32), np.zeros((0, 112, 112), bool), "empty")
    cfg = _config(
        [empty, samples[0]], tmp_path, iterations=2, batch_size=2, train_heads_only=True, lr=0.05
    )
    torch.manual_seed(cfg.seed)
    events = list(train(cfg))
    trained = events[-1].model
    from napari_semiconv.core.model.builder import build_model

    torch.manual_seed(cfg.seed)
    fresh = build_model(cfg.model).state_dict()
    after = trained.state_dict()
    for key, value in fresh.items():
        if key.startswith("backbone."):  # weights and BatchNorm statistics alike
            torch.testing.assert_close(after[key], value, msg=key)
    assert not torch.equal(after["rpn.head.conv.0.0.weight"], fresh["rpn.head.conv.0.0.weight"])


def test_nan_loss_stops_with_clear_error_keeping_last_checkpoint(samples, tmp_path):
    # the baseline: with semiconv a diverging σ (eq. 10) is refused by the operators first
    cfg = _config(
        samples, tmp_path, model=tiny_model_config(semiconv=False), iterations=6,
        checkpoint_every=1, warmup_iters=0, lr=1e12,
    )  # fmt: skip
    seen = []
    with pytest.raises(TrainingDiverged, match="NaN/inf"):
        for event in train(cfg):
            seen.append(event)
    ckpt = load_checkpoint(cfg.out)  # still a valid file
    good = [e.iteration for e in seen if e.phase == "checkpoint"]
    assert good and ckpt.train_state["step"] == good[-1]
    assert all(torch.isfinite(v).all() for v in ckpt.state_dict.values() if v.is_floating_point())


def test_validation_keeps_the_best_checkpoint(samples, tmp_path):
    cfg = _config(samples[:2], tmp_path, iterations=2, eval_every=1, val_samples=samples[2:])
    events = list(train(cfg))
    vals = [e for e in events if e.phase == "val"]
    assert len(vals) == 2
    assert {"AP", "AP50", "avS", "n_images"} <= set(vals[0].metrics)
    assert vals[0].metrics["n_images"] == 1
    best = load_checkpoint(best_path(cfg.out))
    assert best.card["metrics"]["AP"] is not None
    assert best_path("runs/m.pt").name == "m.best.pt"


def test_bad_settings_are_named(samples, tmp_path):
    with pytest.raises(ValueError, match="iterations"):
        list(train(_config(samples, tmp_path, iterations=0)))
    with pytest.raises(ValueError, match="no training data"):
        list(train(_config([], tmp_path)))
    with pytest.raises(ValueError, match="synthetic_fraction"):
        list(train(_config(samples, tmp_path, synthetic_fraction=2.0)))


def test_schedule_warmup_then_steps():
    cfg = TrainConfig(iterations=100, warmup_iters=10, warmup_factor=0.001, lr_steps=(0.5, 0.8))
    assert lr_factor(cfg, 0) == pytest.approx(0.001)
    assert lr_factor(cfg, 10) == 1.0
    assert lr_factor(cfg, 49) == 1.0 and lr_factor(cfg, 50) == pytest.approx(0.1)
    assert lr_factor(cfg, 80) == pytest.approx(0.01)
    cos = dataclasses.replace(cfg, schedule="cosine")
    assert lr_factor(cos, 10) == pytest.approx(1.0) and lr_factor(cos, 100) == pytest.approx(0.0)


def test_batches_cover_each_epoch_and_kfold_keeps_wells_together():
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(5), num_replicas=1, rank=0, shuffle=True, seed=3)
    epoch0 = batch_indices(sampler, 0, 5)
    assert sorted(epoch0) == list(range(5))
    assert batch_indices(sampler, 0, 5) == epoch0  # a function of the step only
    assert batch_indices(sampler, 1, 5) != epoch0 and sorted(batch_indices(sampler, 1, 5)) == [
        0, 1, 2, 3, 4,
    ]  # fmt: skip
    names = [f"plate_{w}_w{c}" for w in ("A01", "A02", "B01", "B02", "C01") for c in (1, 2)]
    fake = [Sample(np.zeros((4, 4), np.float32), np.zeros((0, 4, 4), bool), n) for n in names]
    held_all = []
    for fold in range(3):
        tr, va = kfold_split(fake, 3, fold)
        assert len(tr) + len(va) == len(fake)
        assert not {well_of(s.name) for s in tr} & {well_of(s.name) for s in va}
        held_all += [s.name for s in va]
    assert sorted(held_all) == sorted(names)
    with pytest.raises(ValueError, match="folds"):
        kfold_split(fake, 6, 0)


def test_warm_up_never_takes_more_than_a_tenth_of_the_run():
    # 50 steps with the default 100 warm-up steps ended at half the rate, never decayed.
    short = TrainConfig(iterations=50, warmup_iters=100, lr_steps=(0.67, 0.89))
    assert lr_factor(short, 2) < 0.5
    assert lr_factor(short, 5) == 1.0 and lr_factor(short, 40) == pytest.approx(0.1)
    assert lr_factor(short, 49) == pytest.approx(0.01)
    # a time budget spent in 40 of 1000 steps: its last steps decay too
    budget = TrainConfig(iterations=1000, warmup_iters=100, lr_steps=(0.67, 0.89))
    assert lr_factor(budget, 10, fraction=0.2) == 1.0
    assert lr_factor(budget, 39, fraction=0.95) == pytest.approx(0.01)
    cosine = TrainConfig(iterations=50, warmup_iters=100, schedule="cosine")
    assert lr_factor(cosine, 5) == pytest.approx(1.0) and lr_factor(cosine, 50) == pytest.approx(0)


def test_a_resumed_run_never_goes_back_up_to_a_higher_learning_rate(samples, tmp_path):
    # A time budget decayed the schedule ahead of the steps (spent at step 1 of 3); resuming
    # restarted it from step / iterations: lr 1e-4 at the stop, 1e-2 on resuming.
    config = _config(samples, tmp_path, checkpoint_every=1, time_budget_s=1e-3)
    stopped = [e for e in train(config) if e.phase == "train" and e.losses]
    assert [e.iteration for e in stopped] == [1] and stopped[0].lr == pytest.approx(1e-4)
    assert load_checkpoint(config.out).train_state["fraction"] == 1.0
    # a cancelled run goes on where its schedule had got, not from step / iterations
    config = _config(samples, tmp_path / "c", iterations=10, checkpoint_every=1)
    for event in train(config):
        if event.phase == "checkpoint" and event.iteration == 7:  # past the first decay
            break
    resumed = list(train(dataclasses.replace(config, resume=True)))
    steps = [e for e in resumed if e.phase == "train" and e.losses]
    assert [e.iteration for e in steps] == [8, 9, 10]
    assert [e.lr for e in steps] == pytest.approx([1e-3, 1e-3, 1e-4])


def test_a_finished_schedule_is_not_resumed_and_more_iterations_stretch_it(samples, tmp_path):
    # resuming a finished run trained at its final, smallest rate (the widget's "Resume to
    # train longer": 1e-7 for 200 more fine-tuning steps; a spent time budget: 1e-4 for ever)
    config = _config(samples, tmp_path, checkpoint_every=1, time_budget_s=1e-3)
    list(train(config))  # the budget ends the schedule at step 1 of 3
    with pytest.raises(ValueError, match="finished its learning-rate schedule.*more than 3"):
        next(iter(train(dataclasses.replace(config, resume=True, time_budget_s=None))))
    config = _config(samples, tmp_path / "b", iterations=3)
    list(train(config))
    with pytest.raises(ValueError, match="already at step 3"):
        next(iter(train(dataclasses.replace(config, resume=True))))
    # given 12 iterations, the 3-step run is the first quarter of a 12-step schedule
    longer = list(train(dataclasses.replace(config, resume=True, iterations=12)))
    steps = [e for e in longer if e.phase == "train" and e.losses]
    assert [e.iteration for e in steps] == list(range(4, 13))
    assert steps[0].lr == pytest.approx(1e-2)  # before the first decay at 0.67 of the run
    assert steps[-1].lr == pytest.approx(1e-4)  # and decayed by its end


def test_validation_images_without_worms_are_refused_before_training(samples, tmp_path):
    # a BBBC010 well whose masks are all empty is kept as a worm-free image; as the only
    # validation well it failed after the whole training ("AP is undefined")
    empty = Sample(image=samples[0].image, masks=samples[0].masks[:0], name="toy_empty")
    config = _config(samples, tmp_path, val_samples=[empty])
    with pytest.raises(ValueError, match="toy_empty.*hold no worm"):
        next(iter(train(config)))
    assert not (tmp_path / "model.pt").exists()


def test_an_unwritable_output_folder_is_found_before_the_first_step(samples, tmp_path, monkeypatch):
    # a read-only folder was found at the first checkpoint, after checkpoint_every steps of work
    import errno

    import napari_semiconv.core.atomic as atomic

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    # tests run as root, so chmod cannot make a folder read-only: make creating a file fail
    monkeypatch.setattr(atomic.tempfile, "NamedTemporaryFile", read_only)
    events = []
    with pytest.raises(OSError, match="cannot write in .*Read-only file system") as info:
        for event in train(_config(samples, tmp_path / "out", checkpoint_every=100)):
            events.append(event)
    assert info.value.errno == errno.EROFS
    assert not any(e.losses for e in events)  # not one step was trained
