"""Which encoder backend the local model gets on this machine, from its capabilities alone: the
CPU's bf16 support and whether OpenVINO is installed. Without numpy or the model, so that what
only describes the choice (the startup log, the launcher) stays light."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes in bf16 natively (AVX-512 BF16 or AMX), from its flags."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def planned_backend(requested: str = "auto") -> str:
    """The backend a start would choose for `requested`, from capabilities alone (no model is
    loaded; a conversion that fails at load still falls back, and the load says so)."""
    bf16 = cpu_has_bf16()
    if requested in ("auto", "openvino") and openvino_installed():
        return "openvino-bf16" if bf16 else "openvino-fp32"
    if requested in ("auto", "torch-bf16") and bf16:
        return "torch-bf16"
    return "torch-fp32"
