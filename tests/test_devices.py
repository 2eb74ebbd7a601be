"""Device selection (one rule for every job, refused in one line when the device is not usable), bf16 autocast
against fp32, and the shard rule of sharded jobs."""

import functools
import multiprocessing
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from medcf.core.conditioning import encode_attributes
from medcf.core.denoiser import GuidedDenoiser
from medcf.core.guidance import guidance_plan
from medcf.core.guidance_settings import GuidanceSettings
from medcf.core.network import CounterfactualUNet
from medcf.jobs.bundles import bundle_root
from medcf.jobs.loading import load_model
from medcf.prepare import ChestPreparer
from medcf.runtime.devices import cpu_bf16_instructions, precision_hint, resolve_device
from medcf.runtime.distributed import Shard, destroy_process_group, init_process_group


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


@functools.cache
def shipped_chest_model() -> CounterfactualUNet:
    root = Path(bundle_root("cxr_counterfactual"))
    return load_model(root / "models/model.pt", root / "models/graph.json", ChestPreparer(64)).model


def one_guided_step(precision: str, device: str) -> torch.Tensor:
    """One DCFG prediction of the shipped chest model for a noisy image, at the middle of the schedule."""
    model = shipped_chest_model().to(device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 64, 64, generator=generator).to(device)
    codes = encode_attributes(model.schema, [{"age": 50.0, "sex": "M", "race": "White", "disease": "No Finding"}])
    plan = guidance_plan(model.schema, "dcfg", {"sex"}, w_aff=2.0)
    with torch.no_grad():
        prediction = GuidedDenoiser(model, codes.to(device), plan, precision=precision)(x, 500)
    assert prediction.dtype == torch.float32
    return prediction.cpu()


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)])
def test_a_bf16_step_stays_within_a_stated_tolerance_of_fp32(device):
    """bf16 keeps 8 bits of mantissa: one guided prediction of the shipped model (three stacked terms, combined
    in float32) differs from fp32 by less than 2 % of its mean size on average, and is not identical (the
    autocast really ran). Whole counterfactuals are compared on real images by benchmarks/device_throughput.py."""
    fp32, bf16 = one_guided_step("fp32", device), one_guided_step("bf16", device)
    relative = float((bf16 - fp32).abs().mean() / fp32.abs().mean())
    assert 0 < relative < 0.02


def test_an_unknown_precision_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"precision: 'fp16' .* one of fp32, bf16") as caught:
        GuidanceSettings(precision="fp16")
    assert "\n" not in str(caught.value)


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 avx512f {extra}
bogomips\t: 4792.80
"""


@pytest.mark.parametrize(
    ("extra", "found"),
    [("avx512_bf16", ("avx512_bf16",)), ("amx_bf16 avx512_bf16 amx_tile", ("amx_bf16", "avx512_bf16")), ("", ())],
)
def test_the_cpus_bf16_instructions_are_read_from_its_flags(tmp_path, extra, found):
    (tmp_path / "cpuinfo").write_text(CPUINFO.format(extra=extra))
    assert cpu_bf16_instructions(tmp_path / "cpuinfo") == found


def test_an_fp32_job_on_a_cpu_with_bf16_instructions_is_told_of_bf16_and_no_other(tmp_path):
    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text(CPUINFO.format(extra="avx512_bf16"))
    without.write_text(CPUINFO.format(extra=""))
    cpu = torch.device("cpu")
    hint = precision_hint(cpu, "fp32", cpuinfo=with_bf16)
    assert hint.startswith(
        "this CPU has bfloat16 instructions (avx512_bf16): --precision bf16 may run the network faster"
    )
    assert precision_hint(cpu, "bf16", cpuinfo=with_bf16) is None
    assert precision_hint(cpu, "fp32", cpuinfo=without) is None
    assert precision_hint(torch.device("cuda"), "fp32", cpuinfo=with_bf16) is None  # a GPU: bf16 gains little at 64 px
    assert cpu_bf16_instructions(tmp_path / "missing") == ()  # not Linux: no hint


def test_a_single_process_is_the_whole_job():
    shard = Shard.current()
    assert (shard.rank, shard.world, shard.main) == (0, 1, True)
    assert shard.pick(range(5)) == [0, 1, 2, 3, 4] and shard.gather("x") == ["x"]
    assert shard.once(lambda: "made by rank 0") == "made by rank 0"
    assert shard.device("cpu") == torch.device("cpu")


def test_the_multi_gpu_configs_join_a_process_group_and_leave_it(monkeypatch):
    """What torchrun gives a process of one: the group is joined once (a second call is a no-op), a job sees
    itself as rank 0 of 1, and leaving twice is harmless."""
    one_process_group(monkeypatch)
    try:
        init_process_group()
        init_process_group()
        assert dist.is_initialized() and (Shard.current().rank, Shard.current().world) == (0, 1)
        assert dist.get_backend() == ("nccl" if torch.cuda.is_available() else "gloo")
        assert Shard.current().once(lambda: [1, 2]) == [1, 2]
    finally:
        destroy_process_group()
        destroy_process_group()
    assert not dist.is_initialized()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_process_group(monkeypatch, world: int = 1) -> None:
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                        "WORLD_SIZE": str(world), "LOCAL_RANK": "0"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)


def test_a_cpu_job_joins_with_gloo_even_where_a_gpu_is_present(monkeypatch):
    """--device cpu under torchrun on a GPU machine: gloo, not NCCL (which would need a GPU per process)."""
    one_process_group(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        init_process_group("cpu")
        assert dist.get_backend() == "gloo"
    finally:
        destroy_process_group()


def test_one_named_gpu_for_several_processes_is_refused_in_one_line(monkeypatch):
    one_process_group(monkeypatch, world=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"device: 'cuda:1' names one GPU, but each of the torchrun processes"):
        init_process_group("cuda:1")
    assert not dist.is_initialized()


def _once_in_a_group(rank: int, port: int, folder: str) -> None:
    """A rank of a 2-process gloo group whose rank 0 fails inside Shard.once; writes what this rank raised."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0")
    init_process_group("cpu")
    try:
        Shard.current().once(lambda: (_ for _ in ()).throw(ValueError("labels: no cohort table")))
        found = "nothing"
    except Exception as error:  # what each rank ends with
        found = f"{type(error).__name__}: {error}"
    finally:
        destroy_process_group()
    (Path(folder) / f"rank{rank}.txt").write_text(found)


def test_when_rank_0_fails_in_once_every_rank_stops_instead_of_waiting(tmp_path):
    context, port = multiprocessing.get_context("spawn"), free_port()
    ranks = [context.Process(target=_once_in_a_group, args=(rank, port, str(tmp_path))) for rank in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=90)
    stuck = [process.is_alive() for process in ranks]
    for process in ranks:
        process.kill()
    assert stuck == [False, False], "a rank still waits for rank 0"
    assert (tmp_path / "rank0.txt").read_text() == "ValueError: labels: no cohort table"
    assert (tmp_path / "rank1.txt").read_text() == (
        "RuntimeError: rank 0 failed, so this rank stops too: ValueError: labels: no cohort table"
    )


def test_shards_split_the_items_by_rank_without_overlap():
    picks = [Shard(rank, 3).pick(list(range(10))) for rank in range(3)]
    assert picks == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(item for pick in picks for item in pick) == list(range(10))


def test_each_rank_draws_its_own_noise_and_a_rerun_draws_the_same():
    """The seed of a sharded training's rank: rank 0 keeps the configured seed, the others get distinct seeds
    derived from it, so the ranks' noise differs, and the same seed and rank give the same noise again."""
    seeds = [Shard(rank, 4).seed(7) for rank in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4 and seeds == [Shard(rank, 4).seed(7) for rank in range(4)]
    assert Shard(1, 4).seed(8) != seeds[1]

    def noise(seed):
        return torch.randn(4, generator=torch.Generator().manual_seed(seed))

    assert not torch.equal(noise(seeds[0]), noise(seeds[1])) and torch.equal(noise(seeds[1]), noise(seeds[1]))
