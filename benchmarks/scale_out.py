"""Scale-out of the sharded inference: counterfactuals per second of the chest inference bundle on one process and
on N processes (torchrun, ``multi_gpu_inference.yaml``), on the same phantom export, one row per run appended to
benchmarks/results/scale_out.csv.

    .venv/bin/python benchmarks/scale_out.py [--device cpu] [--processes 1 2] [--threads 1] [--subjects 32]
        [--steps 20] [--batch 8] [--guidance dcfg] [--out benchmarks/results/scale_out.csv]

On a CPU each process gets ``--threads`` torch threads (give N x threads <= the cores, so that N processes have
N times one process's cores); on GPUs each process its own card (``cuda:LOCAL_RANK``). ``efficiency`` is a run's
counterfactuals per second over N times the one-process run's: the issue's target is at least 0.9. The rate is the
job's own clock (rank 0's, from the start of the job to the gathered manifest; interpreter and torchrun start-up
excluded). It prints whether every run made the same rows (their count per intervention and status).
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

import pandas as pd
from throughput import append_rows, device_name, run_inference_bundle  # benchmarks/throughput.py, beside this script

from medcf.jobs.phantom_sets import phantom_export_with_cohort
from medcf.runtime.devices import resolve_device

COLUMNS = [
    "device", "processes", "threads_per_process", "subjects", "steps", "batch", "guidance", "counterfactuals",
    "seconds", "counterfactuals_per_s", "efficiency", "date",
]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    parser.add_argument("--subjects", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--guidance", default="dcfg")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale_out.csv")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    rows, counts = [], []
    with tempfile.TemporaryDirectory() as folder:
        export, cohort = phantom_export_with_cohort("cxr", Path(folder) / "data", args.subjects, 128, 4242)
        single = None
        for processes in args.processes:
            out = Path(folder) / f"out_{processes}"
            made, seconds = run_inference_bundle(
                export, cohort, out, args.guidance, args.steps, args.batch, args.device, processes=processes,
                environment={"OMP_NUM_THREADS": str(args.threads)}, extra=("--workers", "0"),
            )  # fmt: skip
            rate = made / seconds
            single = rate if processes == 1 else single
            efficiency = rate / (processes * single) if single else float("nan")
            counts.append(pd.read_csv(out / "manifest.csv").groupby(["intervention", "status"]).size())
            rows.append({
                "device": device_name(device), "processes": processes, "threads_per_process": args.threads,
                "subjects": args.subjects, "steps": args.steps, "batch": args.batch, "guidance": args.guidance,
                "counterfactuals": made, "seconds": round(seconds, 1), "counterfactuals_per_s": round(rate, 4),
                "efficiency": round(efficiency, 3), "date": datetime.date.today().isoformat(),
            })  # fmt: skip
            print(f"{processes} process(es) x {args.threads} thread(s): {made} counterfactuals in {seconds:.1f} s = "
                  f"{rate:.3g}/s, efficiency {efficiency:.2f}", flush=True)  # fmt: skip
    print(f"the same rows (per intervention and status) in every run: {all(c.equals(counts[0]) for c in counts)}")
    append_rows(args.out, rows, COLUMNS)


if __name__ == "__main__":
    main()
