"""The same `train()` under two CPU processes on the gloo backend (what torchrun sets up)."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch without gloo"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str, tests_dir: str) -> None:
    # the environment torchrun gives each process; train() reads it
    os.environ.update(
        WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    sys.path.insert(0, tests_dir)
    torch.set_num_threads(1)
    from toy_worms import tiny_model_config, toy_worms

    from napari_semiconv.core.data.sample import Sample
    from napari_semiconv.core.training import TrainConfig, train

    samples = []
    for i in range(4):
        image, masks = toy_worms((80, 80), n=2, seed=20 + i)
        samples.append(Sample(image=image, masks=masks, name=f"toy_{i}"))
    config = TrainConfig(
        model=tiny_model_config(), samples=samples, iterations=2, batch_size=1, lr=0.01,
        warmup_iters=1, crop=64, device="cpu", checkpoint_every=1,
        out=os.path.join(folder, "ddp.pt"),
    )  # fmt: skip
    events = list(train(config))
    assert not dist.is_initialized(), "train() must leave the process group it created"
    params = {k: v.detach().clone() for k, v in events[-1].model.named_parameters()}
    torch.save(
        {"params": params, "checkpoints": [e.checkpoint for e in events if e.checkpoint]},
        os.path.join(folder, f"rank{rank}.pt"),
    )


def test_two_cpu_processes_train_identical_parameters(tmp_path):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), tests_dir), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # only rank 0 writes checkpoints (and reports them)
    assert len(rank0["checkpoints"]) == 2 and rank1["checkpoints"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.pt", "rank0.pt", "rank1.pt"]
    assert rank0["params"].keys() == rank1["params"].keys()
    for key, value in rank0["params"].items():
        torch.testing.assert_close(rank1["params"][key], value, rtol=0, atol=0, msg=key)
    from napari_semiconv.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "ddp.pt")
    assert ckpt.train_state["step"] == 2 and ckpt.card["recipe"]["world_size"] == 2
    for key, value in rank0["params"].items():
        torch.testing.assert_close(ckpt.state_dict[key], value, msg=key)
