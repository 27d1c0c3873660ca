"""`edgeinfer sim` end to end on a small trace in the Azure format."""

from pathlib import Path

from edgeinfer.services.sim.main import main, pareto
from edgeinfer.services.sim.trace import load_functions, split_across_pops


def write_trace(directory: Path) -> None:
    header = "HashFunction,HashApp,HashOwner," + ",".join(f"minute_{i}" for i in range(1, 1441))
    rows = []
    for name, every in (("periodic", 30), ("chatty", 2), ("rare", 600)):
        counts = [3 if m % every == 0 else 0 for m in range(1440)]
        rows.append(f"{name},{name},{name}," + ",".join(map(str, counts)))
    (directory / "azure-functions-2019-100-invocations.csv").write_text("\n".join([header, *rows]))
    (directory / "azure-functions-2019-100-durations.csv").write_text(
        "HashFunction,HashApp,HashOwner,Count,Average\n"
        "periodic,a,a,1,250\nchatty,b,b,1,40\nrare,c,c,1,1000\n")


def test_streams_keep_every_invocation_when_split_across_pops(tmp_path: Path) -> None:
    write_trace(tmp_path)
    functions = load_functions(tmp_path)
    total = sum(int(counts.sum()) for _, counts, _ in functions)
    streams = split_across_pops(functions, ["a", "b", "c"], seed=1)
    assert sum(c for s in streams for _, c in s.events) == total
    assert {s.duration_s for s in streams} == {0.25, 0.04, 1.0}


def test_sim_prints_every_policy_and_draws_the_tradeoff(tmp_path: Path, capsys) -> None:
    write_trace(tmp_path)
    assert main(["--pops", "2", "--trace-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for name in ("fixed keep-alive", "Knative KPA", "Kubernetes HPA", "hybrid histogram (Shahrad)",
                 "edgeinfer learned keep-alive", "whole day, from no history",
                 "second 12 h, after 12 h of history", "target: vs fixed 10 min"):
        assert name in out
    assert (tmp_path / "out" / "tradeoff-2pops.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "tradeoff-2pops-after-12h.png").stat().st_size > 10_000


def test_the_second_view_counts_only_what_happens_after_its_start() -> None:
    from edgeinfer.services.sim.model import fixed_keepalive, simulate_views

    # Calls at minutes 0, 5, 700 and 730 (10-minute keep-alive), views from 0 and from 720.
    events = [(0, 1), (5, 1), (700, 2), (730, 1)]
    whole, late = simulate_views(events, fixed_keepalive(10), 1440, 1.0, (0, 720))
    assert (whole.invocations, whole.cold_starts) == (5, 3)
    assert (late.invocations, late.cold_starts) == (1, 1)
    # From 720: nothing kept after 700 reaches it (kept to 710); 730 itself, then 731-740.
    assert late.loaded_slots == 1 + 10


def test_pareto_front_drops_dominated_points() -> None:
    assert pareto([(1, 50), (2, 60), (3, 40), (4, 40)]) == [(1, 50), (3, 40)]


def test_a_baseline_is_dominated_only_by_a_setting_no_worse_on_both_axes() -> None:
    from edgeinfer.services.sim.main import PolicyResult, dominated

    def point(name: str, cold: float, idle: float) -> PolicyResult:
        return PolicyResult(name, "", 0.0, cold, idle, 0.0, 0, 0, 0.0)

    baseline = point("fixed", 25.0, 569.0)
    ours = [point("a", 16.3, 566.0), point("b", 10.0, 706.0), point("c", 30.0, 400.0)]
    assert dominated(baseline, ours) == ours[0]
    assert dominated(point("hpa", 12.0, 1578.0), ours) == ours[1]
    assert dominated(point("hpa", 7.3, 1578.0), ours) is None  # fewer cold starts than any
    assert dominated(point("cheap", 50.0, 200.0), ours) is None


def test_an_exact_tie_is_not_domination() -> None:
    from edgeinfer.services.sim.main import PolicyResult, dominated

    def point(name: str, cold: float, idle: float) -> PolicyResult:
        return PolicyResult(name, "", 0.0, cold, idle, 0.0, 0, 0, 0.0)

    assert dominated(point("fixed", 16.3, 566.0), [point("a", 16.3, 566.0)]) is None
    # Equal on one axis and better on the other still dominates.
    tie_idle = point("b", 15.0, 566.0)
    assert dominated(point("fixed", 16.3, 566.0), [tie_idle]) == tie_idle
    tie_cold = point("c", 16.3, 500.0)
    assert dominated(point("fixed", 16.3, 566.0), [tie_cold]) == tie_cold


def test_a_keep_alive_across_the_view_start_counts_only_its_later_part() -> None:
    from edgeinfer.services.sim.model import fixed_keepalive, simulate_views

    _, late = simulate_views([(715, 1), (730, 1)], fixed_keepalive(10), 740, 1.0, (0, 720))
    assert late.loaded_slots == 6 + 1 + 9  # 720-725 kept, 730 busy, 731-739 kept
    assert (late.invocations, late.cold_starts) == (1, 1)


def test_pinned_deployments_are_served_only_inside_their_jurisdiction(tmp_path: Path) -> None:
    from edgeinfer.services.sim.trace import Geography

    write_trace(tmp_path)
    functions = load_functions(tmp_path)
    pops = [f"p{i}" for i in range(6)]
    geography = Geography.spread(pops)
    streams = split_across_pops(functions, pops, seed=3, pinned_share=1.0)
    for name in {s.deployment for s in streams}:
        served = {geography.jurisdiction[s.pop] for s in streams if s.deployment == name}
        assert len(served) == 1  # every client, wherever it is, served in one jurisdiction
    assert sum(c for s in streams for _, c in s.events) == sum(int(c.sum()) for _, c, _ in functions)
    # Unpinned, each client region is served by its own PoP (5 ms beats any other).
    free = split_across_pops(functions, pops, seed=3, pinned_share=0.0)
    assert len({s.pop for s in free}) == len(pops)
