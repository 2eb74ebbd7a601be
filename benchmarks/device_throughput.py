"""Throughput on this machine's device, fp32 against bf16 autocast, and what bf16 does to the counterfactuals.

    .venv/bin/python benchmarks/device_throughput.py [--device auto] [--batches 1 4 16 64 256] [--steps 50]
        [--repeats 3] [--images 8] [--out results.json]

Runs on whatever device ``--device`` names (auto: CUDA when present, else the CPU); on a CPU the default batch
sizes stop at 16. Reported, medians over ``--repeats``:

1. the device's measured matmul peak (square matmuls, fp32 and bf16; on CUDA fp32 means TF32 off, "tf32" on);
2. UNet throughput: forward rows per second of the bundle network (channels 32/64/128, 64 x 64) per batch size
   and precision, its FLOPs per row (torch's flop counter) and the share of the matmul peak it reaches;
3. counterfactuals per second: one abduction + one DCFG decode (M = 2, ``--steps`` DDIM steps) per image, per
   batch size and precision;
4. quality (shipped chest weights, ``--images`` held-out phantom images, 50 steps): reconstruction MAE to the
   source on [-1, 1] under fp32 and bf16, and the mean |bf16 - fp32| of do(sex=F) counterfactuals.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from throughput import median_seconds  # benchmarks/throughput.py, beside this script
from torch.utils.flop_counter import FlopCounterMode

from medcf.core.causal import CausalGraph
from medcf.core.diffusion import DiffusionConfig
from medcf.core.engine import CounterfactualEngine
from medcf.core.guidance_settings import GuidanceSettings
from medcf.core.interventions import parse_intervention
from medcf.core.network import CounterfactualUNet
from medcf.jobs.bundles import bundle_root
from medcf.jobs.loading import load_model
from medcf.jobs.phantom_sets import phantom_export_with_cohort
from medcf.measure.evaluation_set import load_evaluation_set
from medcf.phantoms.cxr import CXR_SCHEMA, ChestXRayPhantom
from medcf.prepare import ChestPreparer
from medcf.runtime.devices import resolve_device

PRECISIONS = ("fp32", "bf16")


def matmul_peak(device: torch.device, repeats: int) -> dict[str, float]:
    """TFLOP/s of square matmuls per dtype (the largest size of a few that fits the time)."""
    n = 8192 if device.type == "cuda" else 1024
    found = {}
    kinds = [("fp32", torch.float32, False), ("bf16", torch.bfloat16, False)]
    if device.type == "cuda":
        kinds.insert(1, ("tf32", torch.float32, True))
    for name, dtype, tf32 in kinds:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        loops = 10 if device.type == "cuda" else 3
        seconds = median_seconds(lambda a=a, b=b, loops=loops: [a @ b for _ in range(loops)], device, repeats)
        found[name] = 2 * n**3 * loops / seconds / 1e12
        print(f"matmul {name}: {found[name]:.3g} TFLOP/s", flush=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    return found


def unet_inputs(model: CounterfactualUNet, rows: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    codes = torch.tensor([[50.0, 1, 0, 0]], device=device).repeat(rows, 1)
    keep = torch.ones(rows, len(model.schema.names), dtype=torch.bool, device=device)
    x = torch.randn(rows, 1, 64, 64, device=device)
    return x, torch.full((rows,), 500, device=device, dtype=torch.long), codes, keep


@torch.no_grad()
def unet_throughput(model: CounterfactualUNet, device: torch.device, batches: list[int], repeats: int) -> list[dict]:
    """Rows per second of one forward, per batch and precision, with FLOPs per row."""
    with FlopCounterMode(display=False) as counter:
        model(*unet_inputs(model, 1, device))
    flops_per_row = counter.get_total_flops()
    rows = []
    for precision in PRECISIONS:
        for batch in batches:
            inputs = unet_inputs(model, batch, device)

            def forward(inputs=inputs, precision=precision):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    return model(*inputs)

            seconds = median_seconds(forward, device, repeats)
            rows.append({
                "precision": precision, "batch": batch, "rows_per_s": batch / seconds,
                "tflops": flops_per_row * batch / seconds / 1e12, "flops_per_row": flops_per_row,
            })  # fmt: skip
            print(f"unet {precision} batch {batch}: {batch / seconds:.3g} rows/s", flush=True)
    return rows


def counterfactual_rate(
    model: CounterfactualUNet, device: torch.device, batches: list[int], steps: int, repeats: int
) -> list[dict]:
    """Counterfactuals per second (abduction + one DCFG decode per image), per batch and precision."""
    table = pd.DataFrame([s.attributes for s in ChestXRayPhantom().sample(500, np.random.default_rng(0))])
    graph = CausalGraph.fit(CXR_SCHEMA, table)
    intervention = parse_intervention(CXR_SCHEMA, "do(sex=F)")
    rows = []
    for precision in PRECISIONS:
        settings = GuidanceSettings(mode="dcfg", w_aff=2.0, steps=steps, precision=precision)
        engine = CounterfactualEngine(model, DiffusionConfig(), graph, settings)
        for batch in batches:
            factual = [{"age": 50.0, "sex": "M", "race": "White", "disease": "No Finding"}] * batch
            images = torch.rand(batch, 1, 64, 64) * 2 - 1
            seconds = median_seconds(
                lambda engine=engine, images=images, factual=factual: engine.run(images, factual, [intervention]),
                device,
                max(1, repeats if batch <= 64 else 1),
            )
            rows.append({"precision": precision, "batch": batch, "counterfactuals_per_s": batch / seconds})
            print(f"counterfactuals {precision} batch {batch}: {batch / seconds:.3g} /s", flush=True)
    return rows


def bf16_quality(device: torch.device, images: int) -> dict[str, float]:
    """Reconstruction MAE (fp32, bf16) and mean |bf16 - fp32| of do(sex=F), shipped chest weights, 50 steps."""
    root = Path(bundle_root("cxr_counterfactual"))
    preparer = ChestPreparer(64)
    loaded = load_model(root / "models/model.pt", root / "models/graph.json", preparer, None, device)
    with tempfile.TemporaryDirectory() as folder:
        dataset, labels = phantom_export_with_cohort("cxr", folder, images, 128, 1000)
        pool = load_evaluation_set(dataset, labels, preparer, loaded.model.schema)
    intervention = parse_intervention(loaded.model.schema, "do(sex=F)")
    found, counterfactuals = {}, {}
    for precision in PRECISIONS:
        settings = GuidanceSettings(mode="dcfg", w_aff=2.0, steps=50, precision=precision)
        engine = CounterfactualEngine(loaded.model, loaded.diffusion, loaded.graph, settings)
        latents = engine.abduct(pool.images, pool.factual)
        null = engine.reconstruct(latents, pool.factual, set()).cpu()
        found[f"reconstruction_mae_{precision}"] = float((null - pool.images).abs().mean())
        batch = engine.predict(latents, pool.factual, intervention)
        counterfactuals[precision] = (batch.made, batch.images.cpu())
    made = sorted(set(counterfactuals["fp32"][0]) & set(counterfactuals["bf16"][0]))
    pick = {p: counterfactuals[p][1][[counterfactuals[p][0].index(k) for k in made]] for p in PRECISIONS}
    found["counterfactual_bf16_vs_fp32_mae"] = float((pick["bf16"] - pick["fp32"]).abs().mean())
    found["images"] = len(pool)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--skip", nargs="*", default=[], choices=["peak", "unet", "counterfactuals", "quality"])
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    batches = args.batches or ([1, 4, 16, 64, 256] if device.type == "cuda" else [1, 4, 16])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}), torch {torch.__version__}", flush=True)
    torch.manual_seed(0)
    model = CounterfactualUNet(CXR_SCHEMA).to(device).eval()
    results: dict[str, object] = {"device": name, "torch": torch.__version__}
    if "peak" not in args.skip:
        results["matmul_peak_tflops"] = matmul_peak(device, args.repeats)
    if "unet" not in args.skip:
        results["unet"] = unet_throughput(model, device, batches, args.repeats)
    if "counterfactuals" not in args.skip:
        results["counterfactuals"] = counterfactual_rate(model, device, batches, args.steps, args.repeats)
    if "quality" not in args.skip:
        results["bf16_quality"] = bf16_quality(device, args.images)
        print("bf16 quality:", results["bf16_quality"], flush=True)
    peak = results.get("matmul_peak_tflops", {})
    if "unet" in results:
        print("\n| precision | batch | UNet rows/s | TFLOP/s | share of the matmul peak |\n|---|---|---|---|---|")
        for row in results["unet"]:
            reference = peak.get("bf16" if row["precision"] == "bf16" else "fp32")
            share = f"{row['tflops'] / reference:.1%}" if reference else "n/a"
            print(f"| {row['precision']} | {row['batch']} | {row['rows_per_s']:.3g} | {row['tflops']:.3g} | {share} |")
    if "counterfactuals" in results:
        print("\n| precision | batch | counterfactuals/s |\n|---|---|---|")
        for row in results["counterfactuals"]:
            print(f"| {row['precision']} | {row['batch']} | {row['counterfactuals_per_s']:.3g} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
