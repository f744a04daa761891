"""Device resolution: auto picks the best available device; bad names are clear errors."""

from __future__ import annotations

import pytest
import torch

from napari_semiconv.core.devices import available_devices, resolve_device


def test_auto_is_the_first_available_device():
    names = available_devices()
    assert names[-1] == "cpu"
    assert resolve_device("auto") == torch.device(names[0])
    assert resolve_device() == resolve_device("auto")
    if torch.cuda.is_available():
        assert names[0] == "cuda:0"


def test_cpu_and_device_objects():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_unknown_and_unavailable_devices_raise_value_error():
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="cuda:99"):
        resolve_device("cuda:99")  # no machine here has 100 GPUs
    with pytest.raises(ValueError):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(TypeError):
        resolve_device(0)


def test_bf16_autocast_pays_only_where_the_hardware_has_bf16():
    from napari_semiconv.core.devices import bf16_autocast_pays

    assert bf16_autocast_pays(torch.device("cuda:0")) is True
    assert bf16_autocast_pays(torch.device("mps")) is False
    assert isinstance(bf16_autocast_pays(torch.device("cpu")), bool)
