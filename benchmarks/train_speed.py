"""Training throughput of the counterfactual denoiser and how much of the machine's fp32 matmul speed the
UNet forward reaches.

    .venv/bin/python benchmarks/train_speed.py [--repeats 5]

Measured in one run: (1) fp32 GEMM FLOP/s (2048 x 2048 matmuls), (2) the UNet forward at 64 x 64, batch 8
(FLOPs counted by torch.utils.flop_counter, time measured) as a fraction of (1), for medcf's network and for
MONAI's DiffusionModelUNet alone with the same channels, (3) training images per second (forward, backward,
AdamW step) at 64 x 64 and 192 x 192. Medians over ``--repeats`` timings; CUDA is used when present.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from monai.networks.nets import DiffusionModelUNet
from torch.utils.flop_counter import FlopCounterMode

from medcf.core.network import CounterfactualUNet, ModelConfig
from medcf.phantoms.cxr import CXR_SCHEMA


def timed(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def gemm_flops(device: torch.device, repeats: int) -> float:
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    return 2 * 2048**3 / timed(lambda: a @ b, repeats)


def forward_flops(network, inputs) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(*inputs)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    peak = gemm_flops(device, args.repeats)
    print(f"device {device}, torch threads {torch.get_num_threads()}; fp32 GEMM {peak / 1e9:.0f} GFLOP/s")

    config = ModelConfig()
    batch = 8
    ours = CounterfactualUNet(CXR_SCHEMA, config).to(device).eval()
    monai = (
        DiffusionModelUNet(
            2,
            1,
            1,
            channels=config.channels,
            attention_levels=config.attention_levels,
            num_res_blocks=config.num_res_blocks,
            num_head_channels=config.num_head_channels,
        )
        .to(device)
        .eval()
    )
    x = torch.randn(batch, 1, 64, 64, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    codes = torch.tensor([[60.0, 1, 2, 0]] * batch, device=device)
    keep = torch.ones(batch, 4, dtype=torch.bool, device=device)
    print(
        "| network (64 x 64, batch 8) | parameters | GFLOP / forward | forward time | achieved GFLOP/s "
        "| fraction of GEMM |"
    )
    print("|---|---|---|---|---|---|")
    for name, network, inputs in (
        ("medcf CounterfactualUNet", ours, (x, t, codes, keep)),
        ("MONAI DiffusionModelUNet (default groups)", monai, (x, t)),
    ):
        flops = forward_flops(network, inputs)
        with torch.no_grad():
            seconds = timed(lambda network=network, inputs=inputs: network(*inputs), args.repeats)
        params = sum(p.numel() for p in network.parameters())
        print(
            f"| {name} | {params / 1e6:.2f} M | {flops / 1e9:.1f} | {seconds * 1000:.0f} ms | "
            f"{flops / seconds / 1e9:.0f} | {flops / seconds / peak:.0%} |",
            flush=True,
        )

    print("\n| training step (forward + backward + AdamW) | batch | median step | images/s |")
    print("|---|---|---|---|")
    ours.train()
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    for size, size_batch in ((64, 8), (64, 32), (192, 4)):
        x = torch.randn(size_batch, 1, size, size, device=device)
        t = torch.randint(0, 1000, (size_batch,), device=device)
        codes = torch.tensor([[60.0, 1, 2, 0]] * size_batch, device=device)
        keep = torch.ones(size_batch, 4, dtype=torch.bool, device=device)

        def step(x=x, t=t, codes=codes, keep=keep) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(ours(x, t, codes, keep), torch.randn_like(x))
            loss.backward()
            optimizer.step()

        seconds = timed(step, args.repeats, warmup=1)
        print(f"| {size} x {size} | {size_batch} | {seconds * 1000:.0f} ms | {size_batch / seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
