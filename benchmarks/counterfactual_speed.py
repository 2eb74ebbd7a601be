"""Counterfactual cost: guidance modes and shared abduction against a naive implementation, in one run.

    .venv/bin/python benchmarks/counterfactual_speed.py [--steps 50] [--batch 8] [--interventions 3] [--repeats 3]
        [--max_rows N] [--skip_shared]

The network is the bundle architecture (channels 32/64/128) at 64 x 64; cost does not depend on the weights.
Reported (medians over ``--repeats``):
1. decoding cost per guidance mode (network evaluations and wall time per counterfactual): none, cfg, dcfg
   (M = 2) batched in one forward per step, and dcfg with a separate forward per guidance term (naive);
   goal: DCFG at most 1.6x the wall time of CFG (the evaluation bound is 1.5x);
2. K interventions per image: one shared abduction + K decodes against a fresh inversion per intervention;
   goal: at least 2K / (1 + K) x faster.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
import torch

from medcf.core.causal import CausalGraph
from medcf.core.diffusion import DiffusionConfig
from medcf.core.engine import CounterfactualEngine
from medcf.core.guidance import dcfg, guidance_plan
from medcf.core.guidance_settings import GuidanceSettings
from medcf.core.interventions import parse_intervention
from medcf.core.network import CounterfactualUNet
from medcf.phantoms.cxr import CXR_SCHEMA, ChestXRayPhantom

INTERVENTIONS = ["do(sex=F)", "do(age=+10)", "do(race=Black)", "do(disease=Pleural Effusion)"]


def median_time(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


class SeparateTermsDenoiser:
    """The naive DCFG step: one forward call per guidance term instead of one batched call."""

    def __init__(self, model, attributes, plan):
        self.model, self.attributes, self.plan = model, attributes, plan

    def __call__(self, x, t):
        timesteps = torch.full((x.shape[0],), t)
        outputs = [self.model(x, timesteps, self.attributes, row.expand(x.shape[0], -1)) for row in self.plan.keep]
        return dcfg(outputs[0], outputs[1:], self.plan.weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--interventions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_rows", type=int, default=-1, help="rows per forward call (-1: engine default, 0: all)")
    parser.add_argument("--skip_shared", action="store_true", help="only the guidance-mode table")
    args = parser.parse_args()
    max_rows = None if args.max_rows == 0 else args.max_rows
    torch.manual_seed(0)
    model = CounterfactualUNet(CXR_SCHEMA).eval()
    graph = CausalGraph.fit(
        CXR_SCHEMA, pd.DataFrame([s.attributes for s in ChestXRayPhantom().sample(2000, np.random.default_rng(0))])
    )
    factual = [{"age": 50.0, "sex": "M", "race": "White", "disease": "No Finding"}] * args.batch
    images = torch.rand(args.batch, 1, 64, 64) * 2 - 1
    print(
        f"torch threads {torch.get_num_threads()}, {args.steps} DDIM steps, batch {args.batch}, 64 x 64, "
        f"median of {args.repeats}, max_rows {args.max_rows}"
    )

    def engine(mode: str) -> CounterfactualEngine:
        return CounterfactualEngine(
            model,
            DiffusionConfig(),
            graph,
            GuidanceSettings(mode=mode, weight=2.0, w_aff=2.0, steps=args.steps, max_rows=max_rows),
        )

    intervention = parse_intervention(CXR_SCHEMA, "do(sex=F)")
    latents = engine("none").abduct(images, factual)
    print("\n| decoding | network evaluations / counterfactual | seconds / counterfactual | vs cfg |")
    print("|---|---|---|---|")
    timings = {}
    for mode in ("none", "cfg", "dcfg"):
        cf = engine(mode)
        result = cf.predict(latents, factual, intervention)
        timings[mode] = median_time(lambda cf=cf: cf.predict(latents, factual, intervention), args.repeats)
        timings[mode + "_evals"] = result.network_evaluations
    naive = engine("dcfg")
    plan = guidance_plan(CXR_SCHEMA, "dcfg", {"sex"}, w_aff=2.0)
    codes = torch.tensor([[50.0, 1, 0, 0]] * args.batch)
    with torch.no_grad():
        timings["naive"] = median_time(
            lambda: naive.sampler.decode(SeparateTermsDenoiser(model, codes, plan), latents), args.repeats
        )
    for name, label, evals in (
        ("none", "conditional (no guidance)", timings["none_evals"]),
        ("cfg", "cfg, batched", timings["cfg_evals"]),
        ("dcfg", "dcfg M = 2, batched (an image's terms in one call)", timings["dcfg_evals"]),
        ("naive", "dcfg M = 2, naive (a forward per term)", timings["dcfg_evals"]),
    ):
        print(f"| {label} | {evals} | {timings[name] / args.batch:.3f} | {timings[name] / timings['cfg']:.2f}x |")

    if args.skip_shared:
        return
    k = args.interventions
    chosen = [parse_intervention(CXR_SCHEMA, t) for t in INTERVENTIONS[:k]]
    print(
        f"\n| {k} interventions per image | fresh inversion per intervention (s / image) | one shared abduction "
        "(s / image) | speed-up | 2K/(1+K) |"
    )
    print("|---|---|---|---|---|")
    for mode in ("none", "dcfg"):
        cf = engine(mode)
        shared = median_time(lambda cf=cf: cf.run(images, factual, chosen), args.repeats)
        fresh = median_time(lambda cf=cf: [cf.run(images, factual, [i]) for i in chosen], args.repeats)
        print(
            f"| decoding with {mode} | {fresh / args.batch:.3f} | {shared / args.batch:.3f} | {fresh / shared:.2f}x | "
            f"{2 * k / (1 + k):.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
