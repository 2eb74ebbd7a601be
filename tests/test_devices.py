"""Device selection: one rule for every job, refused in one line when the device is not usable."""

import pytest
import torch

from medcf.devices import resolve_device


def test_auto_picks_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device(" AUTO ").type == expected


def test_named_devices_pass_through():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "message"),
    [("gpu", r"device: 'gpu' is not a device"), ("meta", r"device: 'meta' is not supported")],
)
def test_bad_names_fail_in_one_line(name, message):
    with pytest.raises(ValueError, match=message) as caught:
        resolve_device(name)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ValueError, match=r"device: 'cuda' asked for, but no CUDA GPU is usable here"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_past_the_last_device_is_refused():
    with pytest.raises(ValueError, match=r"CUDA device\(s\)"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
