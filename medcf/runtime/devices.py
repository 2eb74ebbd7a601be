"""Which device a job runs on: one rule for every bundle and command."""

from __future__ import annotations

import torch


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
