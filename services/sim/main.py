"""`edgeinfer sim`: cold starts vs idle GPU time, per policy, on a real trace.

    edgeinfer sim [--pops 10] [--trace-dir ../shared/data] [--out sim-results]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeinfer.services.autoscaler.keepalive import KeepAliveConfig
from edgeinfer.services.sim.llm import run_llm
from edgeinfer.services.sim.model import (
    KNATIVE_KPA,
    KUBERNETES_HPA,
    HybridHistogram,
    Policy,
    fixed_keepalive,
    simulate_views,
)
from edgeinfer.services.sim.trace import MINUTES_PER_DAY, Stream, load_functions, split_across_pops

DEFAULT_TRACE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    parameter: str
    mean_cold_pct: float
    p75_cold_pct: float
    idle_gpu_hours: float
    used_gpu_hours: float
    invocations: int
    cold_starts: int
    p99_wait_s: float


def policies() -> list[Policy]:
    out: list[Policy] = [fixed_keepalive(m) for m in (1, 5, 10, 20, 60)]
    out += [KNATIVE_KPA, KUBERNETES_HPA]
    # The published learned policy: Shahrad et al.'s percentiles (head p5, tail p99, 10 %
    # margin, 8 idle times before the histogram is trusted), over its fixed fallback.
    out += [HybridHistogram(KeepAliveConfig(fixed_keepalive_min=fallback, min_samples=8,
                                            cold_start_weight=None))
            for fallback in (5, 10, 60)]
    # Ours (keepalive.py's cost rule), swept over the weight of a cold start; the generous
    # end also over the fallback while history is thin (towards never scaling to zero).
    out += [HybridHistogram(KeepAliveConfig(cold_start_weight=weight))
            for weight in (0.5, 1, 2, 4, 6, 8, 12, 16, 32, 256)]
    out += [HybridHistogram(KeepAliveConfig(cold_start_weight=weight, fixed_keepalive_min=fallback))
            for weight, fallback in ((256, 240), (1024, 240), (4096, 1440))]
    return out


def dominated(baseline: PolicyResult, ours: list[PolicyResult]) -> PolicyResult | None:
    """One of our settings no worse than the baseline on both axes (idle GPU time, p75 cold
    starts) and strictly better on at least one: an exact tie dominates nothing."""
    better = [r for r in ours if r.idle_gpu_hours <= baseline.idle_gpu_hours
              and r.p75_cold_pct <= baseline.p75_cold_pct
              and (r.idle_gpu_hours < baseline.idle_gpu_hours
                   or r.p75_cold_pct < baseline.p75_cold_pct)]
    return min(better, key=lambda r: r.p75_cold_pct, default=None)


def run(streams: list[Stream], policy: Policy, cold_start_s: float,
        measured_from: tuple[int, ...]) -> list[PolicyResult]:
    """One replay of every stream, summarised per view (counted from each of `measured_from`)."""
    per_stream = [simulate_views(s.events, policy, MINUTES_PER_DAY, s.duration_s, measured_from)
                  for s in streams]
    out = []
    for view in range(len(measured_from)):
        # A stream with no invocation in the view has no cold-start rate there.
        results = [r[view] for r in per_stream if r[view].invocations]
        rates = np.array([r.cold_start_rate for r in results]) * 100
        invocations = sum(r.invocations for r in results)
        cold = sum(r.cold_starts for r in results)
        # Every cold start makes one request wait for it; the rest of that minute is warm.
        p99_wait = cold_start_s if cold / max(invocations, 1) > 0.01 else 0.0
        out.append(PolicyResult(policy.name, policy.parameter, float(rates.mean()),
                                float(np.percentile(rates, 75)),
                                sum(r[view].idle_s for r in per_stream) / 3600,
                                sum(r.busy_s for r in results) / 3600, invocations, cold,
                                p99_wait))
    return out


OURS = "edgeinfer learned keep-alive"


def target_check(results: list[PolicyResult]) -> str:
    """The issue's target: at no more idle GPU time than the fixed 10-minute keep-alive,
    at least 50 % fewer cold starts (75th percentile per deployment)."""
    fixed10 = next(r for r in results if r.policy == "fixed keep-alive" and r.parameter == "10 min")
    affordable = [r for r in results if r.policy == OURS and r.idle_gpu_hours <= fixed10.idle_gpu_hours]
    if not affordable:
        return "no setting of ours at or under the fixed 10-minute keep-alive's idle time"
    best = min(affordable, key=lambda r: r.p75_cold_pct)
    change = 100 * (best.p75_cold_pct / fixed10.p75_cold_pct - 1) if fixed10.p75_cold_pct else 0.0
    verdict = "met" if change <= -50 else "NOT met"
    return (f"vs fixed 10 min ({fixed10.p75_cold_pct:.1f} % at {fixed10.idle_gpu_hours:.0f} GPU-h): "
            f"ours {best.parameter} {best.p75_cold_pct:.1f} % at {best.idle_gpu_hours:.0f} GPU-h, "
            f"{change:+.0f} % cold starts (target -50 %: {verdict})")


def plot(results: list[PolicyResult], path: Path, title: str) -> None:
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise SystemExit("edgeinfer sim draws its charts with matplotlib: "
                         "pip install 'edgeinfer[sim]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in dict.fromkeys(r.policy for r in results):
        points = sorted((r.idle_gpu_hours, r.p75_cold_pct) for r in results if r.policy == name)
        if name == OURS:
            points = pareto(points)
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("idle GPU-hours per day (platform cost)")
    ax.set_ylabel("cold starts, 75th percentile per deployment (%)")
    ax.set_title(f"Azure Functions 2019, 100 functions × PoPs: {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points, by idle time ascending."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgeinfer sim", description=__doc__.splitlines()[0])
    parser.add_argument("--pops", type=int, default=10)
    parser.add_argument("--trace-dir", type=Path, default=DEFAULT_TRACE_DIR)
    parser.add_argument("--out", type=Path, default=Path("sim-results"))
    parser.add_argument("--cold-start-s", type=float, default=2.0,
                        help="replica start to ready (ONNX digits: ~2 s here)")
    args = parser.parse_args(argv)
    if not (args.trace_dir / "azure-functions-2019-100-invocations.csv").exists():
        parser.error(f"no Azure Functions trace in {args.trace_dir} (use --trace-dir)")
    started = time.perf_counter()
    pops = [f"pop{i}" for i in range(args.pops)]
    streams = split_across_pops(load_functions(args.trace_dir), pops)
    # Two views of one replay: the whole day, each deployment starting with no history;
    # and the second half, after 12 h in which every policy has learned what it can.
    views = (0, MINUTES_PER_DAY // 2)
    titles = ("whole day, from no history", "second 12 h, after 12 h of history")
    by_view: list[list[PolicyResult]] = [[], []]
    for policy in policies():
        for view, result in enumerate(run(streams, policy, args.cold_start_s, views)):
            by_view[view].append(result)
    elapsed = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{len(streams)} deployment × PoP streams, 1 day, {len(by_view[0])} policy settings, "
          f"simulated in {elapsed:.1f} s ({elapsed / len(by_view[0]):.1f} s per setting)")
    for view, (results, title) in enumerate(zip(by_view, titles, strict=True)):
        png = args.out / f"tradeoff-{args.pops}pops{'' if view == 0 else '-after-12h'}.png"
        plot(results, png, title)
        print(f"\n{title}")
        print(f"{'policy':30s} {'parameter':34s} {'cold% mean':>10s} {'cold% p75':>9s} "
              f"{'idle GPU-h':>10s} {'used GPU-h':>10s} {'waited':>8s} {'p99 wait':>8s}")
        for r in results:
            print(f"{r.policy:30s} {r.parameter:34s} {r.mean_cold_pct:10.1f} {r.p75_cold_pct:9.1f} "
                  f"{r.idle_gpu_hours:10.1f} {r.used_gpu_hours:10.2f} {r.cold_starts:8d} "
                  f"{r.p99_wait_s:7.1f}s")
        print(f"trade-off plot: {png}")
        ours = [r for r in results if r.policy == OURS]
        for baseline in (r for r in results if r.policy != OURS):
            by = dominated(baseline, ours)
            print(f"  {baseline.policy} {baseline.parameter}: " + (
                f"dominated by ours, {by.parameter} ({by.p75_cold_pct:.1f} % at "
                f"{by.idle_gpu_hours:.0f} GPU-h)" if by else "NOT dominated"))
        print("  target: " + target_check(results))
    llm_trace = args.trace_dir / "azure-llm-inference-2023-code.csv"
    if llm_trace.exists():
        # One PoP, then three with clients split 50/30/20 %: a request finding no free slot
        # near its client is routed (router.policy.choose) to a farther PoP with one.
        for pops, mix in ((("pop0",), None), (("eu-west", "us-east", "ap-south"), (0.5, 0.3, 0.2))):
            started = time.perf_counter()
            llm_results = run_llm(llm_trace, pops, mix)
            where = "one PoP" if len(pops) == 1 else (
                f"{len(pops)} PoPs, clients " + "/".join(f"{m:.0%}" for m in mix or ()))
            print(f"\nAzure LLM code trace ({llm_results[0].requests} requests, 57 min, {where}) "
                  f"through router.choose() and autoscaler.decide(), one step per second, "
                  f"{time.perf_counter() - started:.1f} s")
            print(f"{'policy':28s} {'parameter':36s} {'waited %':>9s} {'p99 wait':>8s} "
                  f"{'idle GPU-h':>10s} {'used GPU-h':>10s} {'starts':>7s}")
            for lr in llm_results:
                print(f"{lr.policy:28s} {lr.parameter:36s} {100 * lr.waited / lr.requests:9.1f} "
                      f"{lr.p99_wait_s:7.1f}s {lr.idle_gpu_s / 3600:10.2f} "
                      f"{lr.used_gpu_s / 3600:10.2f} {lr.cold_starts:7d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
