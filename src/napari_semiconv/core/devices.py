"""Which torch device to run on: ``auto`` picks CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch

__all__ = ["available_devices", "bf16_autocast_pays", "resolve_device"]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def bf16_autocast_pays(device: torch.device) -> bool:
    """Whether training under bfloat16 autocast is faster than float32 on ``device``.

    CUDA: yes. CPU: only with native bf16 arithmetic (AMX tiles or AVX512-BF16, e.g. Xeon
    Sapphire Rapids and later); elsewhere the CPU emulates bf16 and autocast would slow training
    down. Measured on an AMX Xeon, 1 thread, whole-model step of 8 crops of 256 px: 8.5 -> 4.5 s
    (docs/benchmarks.md).
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:  # private torch helpers (torch >= 2.1): absent or failing means no
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def available_devices() -> list[str]:
    """Concrete device names usable here, best first: "cuda:0".., "mps", "cpu"."""
    names = (
        [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:N" or "mps" into a usable ``torch.device``.

    Raises:
        ValueError: an unknown name, or a device this machine does not have (the message lists
            the available ones).
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise TypeError(f"device must be a str or torch.device, got {type(name).__name__}")
    key = name.strip().lower()
    available = available_devices()
    if key == "auto":
        return torch.device(available[0])
    if key == "cpu":
        return torch.device("cpu")
    if key == "mps":
        if not _mps_available():
            raise ValueError(f"device 'mps' is not available here; available: {available}")
        return torch.device("mps")
    if key == "cuda" or key.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r}: CUDA is not available here (no GPU, or a CPU-only torch); "
                f"available: {available}"
            )
        if key == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        index = key.split(":", 1)[1]
        if not index.isdigit():
            raise ValueError(f"device {name!r}: expected 'cuda:N' with N an integer")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise ValueError(
                f"device {name!r}: this machine has {count} CUDA device(s); available: {available}"
            )
        return torch.device("cuda", int(index))
    raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
