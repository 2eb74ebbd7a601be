"""Throughput of medcf on this machine, one row per measurement appended to benchmarks/results/throughput.csv.

    .venv/bin/python benchmarks/throughput.py [--device auto] [--stages engine end_to_end train]
        [--sizes 64 128 192] [--batches 1 8 64 256 512] [--precisions fp32 bf16] [--compile both]
        [--guidance dcfg dcfg_nested cfg dcfg_interval calibrated calibrated_nested] [--plan PLAN.json]
        [--steps 50] [--inversion_refinements 1] [--repeats 3] [--warmup 1]
        [--subjects 64] [--out benchmarks/results/throughput.csv]

Stages (the ``stage`` column):

- ``engine``: the counterfactual core alone: one abduction and three interventions (do(sex=F), do(age=+20),
  do(race=Black)) per image, ``--steps`` DDIM steps, untrained weights of the chest bundle's network shape (cost does
  not depend on the weights); counterfactuals per second, median of ``--repeats``.
- ``end_to_end``: the chest inference bundle as a user runs it (``python -m monai.bundle run ... inference.yaml``)
  on a phantom export of ``--subjects`` subjects: from DICOM files to written DICOMs, PNGs and manifest;
  counterfactuals per second of the job's own clock (model loading and interpreter start-up excluded), one run. At
  the bundle's 64 px only (its model file).
- ``train``: training steps of the same network (forward, backward, AdamW) on random images; images per second in
  the ``counterfactuals_per_s`` column.

``--inversion_refinements``: fixed-point refinements per inversion step (the jobs' default is 1); a row measured
with another count says so in its ``guidance`` (e.g. ``cfg refinements=0``).

``compiled``: the network wrapped by ``torch.compile`` (``--compile both`` measures with and without; a compiler
failure is reported and the row skipped). ``gpu_utilisation``: the mean of ``nvidia-smi`` samples over the
measurement (empty on a CPU). Every row is also printed; peak memory (CUDA: ``max_memory_allocated``; CPU: peak
resident set) goes to the printed line, not the table.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medcf.core.causal import CausalGraph
from medcf.core.diffusion import DiffusionConfig
from medcf.core.engine import CounterfactualEngine
from medcf.core.guidance_plan import CalibratedPlan
from medcf.core.guidance_settings import GuidanceSettings
from medcf.core.interventions import parse_intervention
from medcf.core.network import CounterfactualUNet, load_checkpoint
from medcf.jobs.bundles import bundle_root
from medcf.jobs.phantom_sets import phantom_export_with_cohort
from medcf.phantoms.cxr import CXR_SCHEMA, ChestXRayPhantom
from medcf.runtime.devices import resolve_device

COLUMNS = [
    "device", "stage", "image_size", "batch", "precision", "compiled", "guidance", "counterfactuals_per_s",
    "gpu_utilisation", "date",
]  # fmt: skip
INTERVENTIONS = ("do(sex=F)", "do(age=+20)", "do(race=Black)")
FACTUAL = {"age": 50.0, "sex": "M", "race": "White", "disease": "No Finding"}
GUIDANCE = {
    "dcfg": {"mode": "dcfg", "w_aff": 2.0, "w_inv": 1.0},
    # the same groups chained (rule nested): at w_inv = 1 two rows per image and step, as CFG
    "dcfg_nested": {"mode": "dcfg", "w_aff": 2.0, "w_inv": 1.0, "rule": "nested"},
    "cfg": {"mode": "cfg", "weight": 2.0},
    # the guidance study's interval setting: guided only at noise levels sigma in (0.3, 5], one row per image outside
    "dcfg_interval": {"mode": "dcfg", "w_aff": 3.0, "w_inv": 1.0, "interval": (0.3, 5.0)},
    # the bundle's default: its calibrated plan (models/guidance_plan.json): a weight and a band per attribute
    "calibrated": {"mode": "calibrated"},
    "calibrated_nested": {"mode": "calibrated", "rule": "nested"},
}


BUNDLE_PLAN = Path(bundle_root("cxr_counterfactual")) / "models" / "guidance_plan.json"


def engine_settings(
    name: str, steps: int, precision: str, plan: Path = BUNDLE_PLAN, refinements: int = 1
) -> GuidanceSettings:
    """The engine's settings of the guidance ``name`` of :data:`GUIDANCE` with ``refinements`` per inversion step;
    ``calibrated`` reads the chest guidance ``plan`` (not checked against the fresh network, whose cost does not
    depend on its weights)."""
    options = {**GUIDANCE[name], "steps": steps, "precision": precision, "inversion_refinements": refinements}
    if GUIDANCE[name]["mode"] != "calibrated":
        return GuidanceSettings(**options)
    return CalibratedPlan.load(plan, CXR_SCHEMA).settings(**options)


def guidance_label(name: str, plan: Path, refinements: int = 1) -> str:
    """The table's ``guidance`` of ``name``: a calibrated row names its plan (file and SHA-256 prefix), a row with
    other than the default one inversion refinement its count."""
    label = f"{name} {CalibratedPlan.load(plan, CXR_SCHEMA).label}" if name.startswith("calibrated") else name
    return label if refinements == 1 else f"{label} refinements={refinements}"


class UtilisationSampler:
    """Samples ``nvidia-smi``'s GPU utilisation every half second while active (nothing on a CPU).

    Args:
        device: the measured device.
    """

    def __init__(self, device: torch.device) -> None:
        self.active = device.type == "cuda"
        self.index = device.index or 0
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            query = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            try:
                self.samples.append(float(subprocess.run(query, capture_output=True, text=True, timeout=5).stdout))
            except (OSError, ValueError, subprocess.SubprocessError):
                return

    def __enter__(self) -> UtilisationSampler:
        if self.active:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | str:
        """Mean utilisation in percent, or "" when nothing was sampled."""
        return round(statistics.fmean(self.samples), 1) if self.samples else ""


def device_name(device: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU's model and its cores."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "CPU")  # fmt: skip
    return f"{model} ({torch.get_num_threads()} threads)"


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``run`` after ``warmup`` calls (compilation, cuDNN's choice, the allocator)."""
    for _ in range(warmup):
        run()
    synchronise(device)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        synchronise(device)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (peak RSS)"


def bundle_network(device: torch.device) -> tuple[CounterfactualUNet, DiffusionConfig]:
    """A network of the chest bundle's shape with fresh weights, and its diffusion settings."""
    model, payload = load_checkpoint(Path(bundle_root("cxr_counterfactual")) / "models" / "model.pt")
    fresh = CounterfactualUNet(model.schema, model.config)
    return fresh.to(device).eval(), DiffusionConfig(**payload["diffusion"])


def maybe_compiled(model: CounterfactualUNet, compiled: bool) -> torch.nn.Module:
    return torch.compile(model) if compiled else model


def engine_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Counterfactuals per second of the core, per size, batch, precision, compilation and guidance."""
    model, diffusion = bundle_network(device)
    table = pd.DataFrame([s.attributes for s in ChestXRayPhantom().sample(500, np.random.default_rng(0))])
    graph = CausalGraph.fit(CXR_SCHEMA, table)
    interventions = [parse_intervention(CXR_SCHEMA, text) for text in INTERVENTIONS]
    rows = []
    for compiled in args.compile_modes:
        try:
            network = maybe_compiled(model, compiled)
        except Exception as error:  # noqa: BLE001 - a compiler missing on this machine is a finding, not a crash
            print(f"engine compiled={compiled}: torch.compile failed ({error}); skipped", flush=True)
            continue
        for guidance in args.guidance:
            for precision in args.precisions:
                settings = engine_settings(guidance, args.steps, precision, args.plan, args.inversion_refinements)
                label = guidance_label(guidance, args.plan, args.inversion_refinements)
                engine = CounterfactualEngine(network, diffusion, graph, settings)  # type: ignore[arg-type]
                for size in args.sizes:
                    for batch in args.batches:
                        images = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
                        factual = [FACTUAL] * batch

                        def run(images=images, factual=factual, engine=engine) -> object:
                            return engine.run(images, factual, interventions)

                        try:
                            with UtilisationSampler(device) as sampler:
                                seconds = median_seconds(run, device, args.repeats, args.warmup)
                        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
                            print(f"engine {size}px batch {batch}: {str(error).splitlines()[0]}; skipped", flush=True)
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                            continue
                        rate = len(interventions) * batch / seconds
                        rows.append(row(device, "engine", size, batch, precision, compiled, label, rate, sampler))
                        append_rows(args.out, rows[-1:])
                        print(f"engine {guidance} {precision} compiled={compiled} {size}px batch {batch}: "
                              f"{rate:.3g} counterfactuals/s, peak {peak_memory(device)}", flush=True)  # fmt: skip
    return rows


def guidance_arguments(name: str, plan: Path = BUNDLE_PLAN) -> list[str]:
    """The inference bundle's command-line settings of the guidance ``name`` of :data:`GUIDANCE` (``calibrated``: the
    guidance ``plan``)."""
    settings = GUIDANCE[name]
    keys = {
        "mode": "--guidance", "weight": "--w", "w_aff": "--w_aff", "w_inv": "--w_inv", "interval": "--interval",
        "rule": "--rule",
    }  # fmt: skip
    arguments = [
        text
        for key, value in settings.items()
        for text in (keys[key], str(list(value) if key == "interval" else value))
    ]
    return arguments + (["--guidance_plan", str(plan)] if settings["mode"] == "calibrated" else [])


def run_inference_bundle(
    export: Path, cohort: Path, out: Path, guidance: str, steps: int, batch: int, device: str,
    precision: str = "fp32", processes: int = 1, environment: dict[str, str] | None = None,
    extra: tuple[str, ...] = (), plan: Path = BUNDLE_PLAN,
) -> tuple[int, float]:  # fmt: skip
    """Run the chest inference bundle as a user does (over ``processes`` torchrun processes when more than one, with
    ``multi_gpu_inference.yaml``), the MLflow store beside ``out``; ``calibrated`` guidance decodes with ``plan``.

    Returns:
        (counterfactuals made, seconds of the job's own clock).

    Raises:
        RuntimeError: the command failed, with the end of its error output.
    """
    root = Path(bundle_root("cxr_counterfactual")) / "configs"
    config = str(root / "inference.yaml")
    launcher = [sys.executable, "-m"]
    if processes > 1:
        config = str([config, str(root / "multi_gpu_inference.yaml")])
        launcher += ["torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m"]
    command = [
        *launcher, "monai.bundle", "run", "--config_file", config,
        "--dataset_dir", str(export), "--labels", str(cohort), "--output_dir", str(out),
        *guidance_arguments(guidance, plan), "--steps", str(steps), "--batch_size", str(batch),
        "--precision", precision, "--device", device, "--interventions", str(list(INTERVENTIONS)), *extra,
    ]  # fmt: skip
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{out.parent / 'mlflow.db'}"}
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **store, **(environment or {})})
    found = re.search(r"(\d+) counterfactuals made, .* in ([\d.]+) s", done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{done.stderr.strip().splitlines()[-3:]}")
    return int(found.group(1)), float(found.group(2))


def end_to_end_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Counterfactuals per second of the chest inference bundle command on a phantom export, per batch."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        export, cohort = phantom_export_with_cohort("cxr", Path(folder) / "data", args.subjects, 128, 4242)
        for guidance in args.guidance:
            label = guidance_label(guidance, args.plan, args.inversion_refinements)
            refine = ("--inversion_refinements", str(args.inversion_refinements))
            for precision in args.precisions:
                for batch in args.batches:
                    out = Path(folder) / f"out_{guidance}_{precision}_{batch}"
                    try:
                        with UtilisationSampler(device) as sampler:
                            made, seconds = run_inference_bundle(
                                export, cohort, out, guidance, args.steps, batch, str(device), precision,
                                extra=refine, plan=args.plan,
                            )  # fmt: skip
                    except RuntimeError as error:
                        print(f"end_to_end batch {batch}: failed ({error}); skipped")
                        continue
                    rate = made / seconds
                    rows.append(row(device, "end_to_end", 64, batch, precision, False, label, rate, sampler))
                    append_rows(args.out, rows[-1:])
                    print(f"end_to_end {guidance} {precision} batch {batch}: {made} counterfactuals in "
                          f"{seconds} s = {rate:.3g}/s", flush=True)  # fmt: skip
    return rows


def train_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Training images per second (forward, backward, AdamW step) per size, batch, precision and compilation."""
    model, _ = bundle_network(device)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = []
    for compiled in args.compile_modes:
        try:
            network = maybe_compiled(model, compiled)
        except Exception as error:  # noqa: BLE001
            print(f"train compiled={compiled}: torch.compile failed ({error}); skipped", flush=True)
            continue
        for precision in args.precisions:
            for size in args.sizes:
                for batch in args.batches:
                    x = torch.randn(batch, 1, size, size, device=device)
                    t = torch.randint(0, 1000, (batch,), device=device)
                    codes = torch.tensor([[50.0, 0, 0, 0]], device=device).repeat(batch, 1)
                    keep = torch.ones(batch, len(CXR_SCHEMA.names), dtype=torch.bool, device=device)

                    def step(x=x, t=t, codes=codes, keep=keep, precision=precision, network=network) -> None:
                        optimiser.zero_grad(set_to_none=True)
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                            loss = (network(x, t, codes, keep).float() - x).pow(2).mean()
                        loss.backward()
                        optimiser.step()

                    try:
                        with UtilisationSampler(device) as sampler:
                            seconds = median_seconds(step, device, args.repeats, args.warmup)
                    except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
                        print(f"train {size}px batch {batch}: {str(error).splitlines()[0]}; skipped", flush=True)
                        continue
                    rate = batch / seconds
                    rows.append(row(device, "train", size, batch, precision, compiled, "", rate, sampler))
                    append_rows(args.out, rows[-1:])
                    print(f"train {precision} compiled={compiled} {size}px batch {batch}: {rate:.3g} images/s, "
                          f"peak {peak_memory(device)}", flush=True)  # fmt: skip
    return rows


def row(
    device: torch.device, stage: str, size: int, batch: int, precision: str, compiled: bool, guidance: str,
    rate: float, sampler: UtilisationSampler,
) -> dict:  # fmt: skip
    return {
        "device": device_name(device), "stage": stage, "image_size": size, "batch": batch, "precision": precision,
        "compiled": compiled, "guidance": guidance, "counterfactuals_per_s": round(rate, 4),
        "gpu_utilisation": sampler.mean, "date": datetime.date.today().isoformat(),
    }  # fmt: skip


def append_rows(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> None:
    """Append ``rows`` to the CSV at ``path`` (its header, ``columns``, written when the file is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--stages", nargs="+", default=["engine", "end_to_end", "train"],
                        choices=["engine", "end_to_end", "train"])  # fmt: skip
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192])
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default: 1 8 on a CPU, 1-512 on a GPU")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--compile", default="both", choices=["no", "yes", "both"])
    parser.add_argument("--guidance", nargs="+", default=["dcfg", "cfg"], choices=sorted(GUIDANCE))
    parser.add_argument("--plan", type=Path, default=BUNDLE_PLAN, help="guidance plan of --guidance calibrated")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--inversion_refinements", type=int, default=1, help="per inversion step (jobs' default: 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (0 is fine on a CPU, uncompiled)")
    parser.add_argument("--subjects", type=int, default=64, help="phantom subjects of the end-to-end export")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "throughput.csv")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.batches is None:
        args.batches = [1, 8, 64, 256, 512] if device.type == "cuda" else [1, 8]
    args.compile_modes = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    stages = {"engine": engine_rows, "end_to_end": end_to_end_rows, "train": train_rows}
    for stage in args.stages:
        rows = stages[stage](args, device)  # each row is appended as soon as it is measured
        print(f"{stage}: {len(rows)} rows -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
