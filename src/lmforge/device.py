"""Device and precision choice: CUDA (bf16 autocast, fused AdamW, flash SDPA) > MPS > CPU (fp32).

Everything that depends on the hardware goes through here, so the training engine, scoring and
generation pick the same device and precision from the same names (``"auto"``, ``"cuda:1"``,
``"cpu"``; ``"auto"``, ``"bf16"``, ``"fp16"``, ``"fp32"``).
"""

from __future__ import annotations

import contextlib
import os

import torch

from lmforge.errors import ConfigError

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def _local_gpu() -> torch.device:
    """The GPU of this process: under torchrun the local rank's, else the first."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: the best available accelerator (the local rank's GPU under torchrun), else the CPU.
    A plain ``"cuda"`` is the local rank's GPU too."""
    if name == "auto":
        if torch.cuda.is_available():
            return _local_gpu()
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: CUDA is not available on this machine; use the device cpu (or auto)")
    if device.type == "cuda" and device.index is None:
        device = _local_gpu()
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: MPS is not available on this machine; use the device cpu (or auto)")
    return device


def memory_bytes(device: torch.device) -> int | None:
    """The memory of a device: a GPU's own, the machine's RAM for the CPU; None when unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute (autocast) dtype. ``"auto"``: bf16 on CUDA (fp16 where the GPU has no bf16), fp32
    elsewhere. Parameters and optimizer state always stay fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name == "int8":
        raise ConfigError(
            "dtype: int8 is weight-only inference on the CPU (generate, score, serve --dtype int8), "
            "not training; choose auto, fp32, bf16 or fp16"
        )
    if name not in DTYPES:
        raise ConfigError(f"dtype: unknown dtype {name!r}; choose auto, fp32, bf16 or fp16")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise ConfigError("dtype: fp16 autocast is not supported on the CPU; use fp32 or bf16")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """A context that runs matmuls in ``dtype`` (a no-op for fp32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(device: torch.device) -> None:
    """Fast kernels where they cost no accuracy that matters: TF32 matmuls and flash attention on CUDA."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.enable_flash_sdp(True)
        torch.backends.cuda.enable_mem_efficient_sdp(True)


def fused_adamw_ok(device: torch.device) -> bool:
    """Fused AdamW (one kernel for all parameters): CUDA, and the CPU since torch 2.4."""
    return device.type in ("cuda", "cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock timings mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def describe(device: torch.device, dtype: torch.dtype) -> str:
    """One line for logs: ``cuda:0 (NVIDIA H100) bf16`` / ``cpu (8 threads) fp32``."""
    short = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}) {short}"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads) {short}"
    return f"{device} {short}"
