"""The tuner's decision rule: which measured configuration mlpipe-tune keeps, and why.

The fastest candidate within the p99 budget at `tune.select_concurrency` replaces the best
hand-written config only if it beats it beyond the round-to-round spread measured in the same run
(ε-dominance, :mod:`mlpipe.measure.pareto`); the checks restate the serving targets on the tuner's
own points. Pure functions of measured rows: no server, no clock.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from mlpipe.common.errors import UserError
from mlpipe.measure.pareto import at, choose, eps_dominates, on_front, spread

log = logging.getLogger(__name__)


def select(
    cfg: DictConfig, rows: Sequence[Mapping[str, Any]]
) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """The chosen point at `tune.select_concurrency` and the decision behind it (:func:`decide`),
    or a UserError saying what was missed."""
    tc = cfg.tune
    points = at(rows, int(tc.select_concurrency))
    chosen = choose(points, float(tc.p99_budget_ms))
    if chosen is None:
        ok = [p for p in points if p["status"] == "ok"]
        best = min(ok, key=lambda p: p["p99_ms"], default=None)
        lowest = f"{best['p99_ms']:.1f} ms ({best['config']})" if best else "none (all failed)"
        raise UserError(
            f"no configuration met p99 <= {tc.p99_budget_ms} ms at {tc.select_concurrency} "
            f"clients (lowest p99: {lowest}); raise tune.p99_budget_ms or lower "
            "tune.select_concurrency"
        )
    return decide(points, chosen, float(tc.p99_budget_ms))


def decide(
    points: Sequence[Mapping[str, Any]], best: Mapping[str, Any], budget_ms: float
) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """Noise-aware: the fastest candidate within the budget replaces the best hand-written config
    only if it ε-dominates it (:func:`mlpipe.measure.pareto.eps_dominates`), ε the larger
    round-to-round throughput spread of the two in this run (:func:`spread` of the windows the
    confirmation measured, interleaved). Else the hand-written config is kept, and the reason
    says by how much the candidate missed."""
    hand = choose([p for p in points if p["config"].startswith("untuned_")], budget_ms)
    decision: dict[str, Any] = {"candidate": best["config"], "hand_written": None, "epsilon": None}
    if hand is None or hand["config"] == best["config"]:
        why = "no hand-written config meets the p99 budget" if hand is None else "it is fastest"
        return best, {**decision, "replaced": hand is None, "reason": f"{best['config']}: {why}"}
    eps = max(
        spread(best.get("throughput_rps_runs", ())), spread(hand.get("throughput_rps_runs", ()))
    )
    gain = best["throughput_rps"] / hand["throughput_rps"] - 1
    p99 = best["p99_ms"] / hand["p99_ms"] - 1
    replaced = eps_dominates(best, hand, eps)
    verdict = "beyond" if replaced else "within"
    reason = (
        f"{best['config']} vs hand-written {hand['config']}: throughput {gain:+.1%}, p99 "
        f"{p99:+.1%}, {verdict} the measured spread ε = {eps:.1%}"
        + ("" if replaced else f": {hand['config']} kept")
    )
    decision.update(hand_written=hand["config"], epsilon=eps, replaced=replaced, reason=reason)
    log.info("decision: %s", reason)
    return (best if replaced else hand), decision


def checks(
    points: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any], eps: float = 0.0
) -> dict[str, Any]:
    """The two targets on the tuner's own measurement: the chosen config is on the front (within
    the measured ε), and its throughput is at least that of every untuned config at the same
    concurrency."""
    untuned = {
        p["config"]: p["throughput_rps"] for p in points if p["config"].startswith("untuned_")
    }
    return {
        "on_front": on_front(points, chosen["config"], eps),
        "throughput_vs_untuned": {
            name: chosen["throughput_rps"] / rps if rps else None for name, rps in untuned.items()
        },
        "beats_untuned": all(chosen["throughput_rps"] >= rps for rps in untuned.values()),
    }
