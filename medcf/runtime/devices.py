"""Which device a job runs on: one rule for every bundle and command."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

#: CPU instruction sets that run bfloat16 matrix products natively, as Linux's /proc/cpuinfo names them.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA when present, else the CPU; otherwise the named device, refused in one line when
    it is not usable here (e.g. ``cuda`` on a machine without a GPU).

    Args:
        device: ``auto``, None, ``cpu``, ``cuda``, ``cuda:N`` or a :class:`torch.device`.

    Returns:
        The device to run on.

    Raises:
        ValueError: if ``device`` is not a device, is neither a CPU nor a CUDA device, or names a GPU this machine
            does not have.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device: {device!r} is not a device ({error}); use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asked for, but no CUDA GPU is usable here; use auto or cpu")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif chosen.type != "cpu":
        raise ValueError(f"device: {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return chosen


@functools.cache
def cpu_bf16_instructions(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, ...]:
    """The bfloat16 instruction sets of this machine's CPU (of :data:`CPU_BF16_FLAGS`); () where ``cpuinfo`` cannot be
    read (not Linux) or lists none.

    Args:
        cpuinfo: the file listing the CPU's flags (default: Linux's /proc/cpuinfo).

    Returns:
        The flags found, in the order of :data:`CPU_BF16_FLAGS`.
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return ()
    flags = next((line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags")), [])
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


def precision_hint(
    device: torch.device, precision: str, setting: str = "--precision bf16", cpuinfo: str | Path = "/proc/cpuinfo"
) -> str | None:
    """A line for a job's log where ``fp32`` runs on a CPU that has bfloat16 instructions: on the one measured (an
    AMD EPYC with AVX512-BF16; AMX not measured) ``bf16`` ran the network 1.5-1.6x faster with the same
    reconstruction error (README, "GPUs, many processes and bf16"). fp32 stays the default because outputs then do
    not depend on the machine.

    Args:
        device: the device the network runs on.
        precision: the job's ``precision`` setting (``fp32`` or ``bf16``).
        setting: how the job's user asks for bf16 (default: ``--precision bf16``, the inference bundle's).
        cpuinfo: the file listing the CPU's flags (see :func:`cpu_bf16_instructions`).

    Returns:
        The line, or None (a GPU, ``bf16`` already, or a CPU without bfloat16 instructions).
    """
    found = cpu_bf16_instructions(cpuinfo) if device.type == "cpu" and precision == "fp32" else ()
    if not found:
        return None
    return (
        f"this CPU has bfloat16 instructions ({', '.join(found)}): {setting} may run the network faster (1.5-1.6x on "
        "an AVX512-BF16 CPU measured, with the same reconstruction error; README: GPUs, many processes and bf16)"
    )
