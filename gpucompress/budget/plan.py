"""Plan a budget: measure the curves, allocate, check the result, and say what was decided.

Targets (options.BudgetOptions):
- a size (target_size, or target_bits_per_weight times the candidate values):
  least total SSE whose archive fits. The allocation works on the predicted
  bytes (curves.py); the plan's archive is then encoded (what pack would
  write) and, if it is over the target, the allowance shrinks by the excess
  and the allocation runs again; if it is more than 0.5% under, the allowance
  grows by most of the gap (at most max_tries encodes; the best archive that
  fits is kept).
- an output error E (max_output_error): fewest bytes whose measured output
  error stays <= E. Each probe group of tensors is clustered at the largest k
  and the model run (sensitivity.py): its error e_g gives the group's
  sensitivity s = e_g^2 / SSE_g, and a tensor's predicted share of the squared
  output error at k is s * SSE(k) (errors of different tensors add in squares;
  small perturbations scale linearly). The allocation keeps the predicted sum
  under (0.9 E)^2; the plan's model is then run, and when its measured error
  m > E (or m < 0.6 E) the allowance is scaled by (0.9 E / m)^2, kept between
  the allowances that passed and missed, and the plan redone (at most
  max_tries verifying runs; the smallest plan that met E is kept). Runs: 1 reference + probe groups + tries.
  Tensors whose clustering alone at the largest k breaks E get "kept exact".
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..clustering import cluster_weights
from ..errors import OptionsError
from ..importance import gather_importance
from ..models import defer_values, read_model
from ..options import BudgetOptions, CompressOptions
from .allocate import Allocation, BudgetError, allocate_bytes, allocate_distortion
from .curves import CurveSet, measure_curves

log = logging.getLogger(__name__)

# The share of the output error budget the prediction aims at (the verify run checks the rest).
ERROR_MARGIN = 0.9
# A plan whose measured error is below this share of E tries a looser allowance (if tries are left).
LOOSEN_BELOW = 0.6
# A size plan this much under its target tries again with the difference added to its allowance.
SIZE_SLACK = 0.005


@dataclass(frozen=True)
class PlanRow:
    """One candidate tensor's choice: k (None: kept exact), expected SSE and archive bytes, and the
    measured sensitivity (squared output error per unit SSE; None without an output-error budget)."""

    name: str
    size: int
    k: int | None
    sse: float
    bytes: float
    sensitivity: float | None = None

    def to_dict(self) -> dict:
        """Return JSON-ready values."""
        return {"name": self.name, "values": self.size, "k": self.k, "expected_sse": self.sse,
                "expected_bytes": self.bytes, "sensitivity": self.sensitivity}


@dataclass
class Plan:
    """What a budget decided: rows per candidate tensor, predicted and measured totals.

    target: {"kind": ..., "value": ...}. predicted_bytes: predicted archive
    bytes; archive_bytes: the encoded archive's bytes (None when not measured).
    output_error: the measured worst relative output error of the plan's model
    (max_output_error only). runs: model runs; tries: plans checked. exact:
    whether the allocation is proven optimal for its (predicted) budget.
    """

    target: dict
    rows: list[PlanRow]
    predicted_bytes: float
    predicted_sse: float
    archive_bytes: int | None = None
    output_error: float | None = None
    inputs_source: str | None = None
    runs: int = 0
    tries: int = 0
    exact: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @property
    def clusters(self) -> dict[str, int]:
        """Return {tensor name: k} of the clustered tensors (cluster_weights' clusters argument)."""
        return {row.name: row.k for row in self.rows if row.k is not None}

    def to_dict(self) -> dict:
        """Return JSON-ready values (the report's "budget" entry)."""
        return {"target": dict(self.target), "predicted_bytes": self.predicted_bytes,
                "predicted_sse": self.predicted_sse, "archive_bytes": self.archive_bytes,
                "output_error": self.output_error, "inputs": self.inputs_source, "runs": self.runs,
                "tries": self.tries, "exact_allocation": self.exact,
                "seconds": {k: float(v) for k, v in self.seconds.items()}, "history": list(self.history),
                "tensors": [row.to_dict() for row in self.rows]}


def sse_curves(curves: CurveSet, weights: dict[str, float] | None = None) -> list[tuple[list, list]]:
    """Return (bytes, distortion) per tensor for allocate: SSE, times weights[name] when given.

    weights: a per-tensor importance (e.g. from an importance file); None: plain SSE.
    """
    table = []
    for curve in curves.curves:
        points = curve.points()
        scale = 1.0 if weights is None else float(weights[curve.name])
        table.append(([b for _, b, _ in points], [scale * sse for _, _, sse in points]))
    return table


def _rows(curves: CurveSet, allocation: Allocation, sensitivity: dict[str, float] | None = None) -> list[PlanRow]:
    rows = []
    for curve, choice in zip(curves.curves, allocation.choices):
        k, size, sse = curve.points()[choice]
        rows.append(PlanRow(curve.name, curve.size, k, sse, size,
                            None if sensitivity is None else sensitivity[curve.name]))
    return rows


def encoded_size(path: Path, options: CompressOptions, clusters: dict[str, int], weighing: dict | None = None) -> int:
    """Return the bytes of the archive pack would write for a per-tensor plan (encoded in memory).

    weighing: cluster_weights' importance and importance_source, as the final run has them.
    """
    from ..packing import encode_model

    model = read_model(path)
    run = cluster_weights(model.weights(), options, clusters=clusters,
                          on_tensor=lambda t: defer_values(model, t.name, t.shape, t.values), **(weighing or {}))
    info = {"producer": "gpucompress", "n_clusters": options.n_clusters,
            "global_clusters": options.global_clusters, "init": options.init, "method": options.method}
    data, _ = encode_model(model, run, info)
    return len(data)


def plan_budget(path, options: CompressOptions, budget: BudgetOptions, *, on_progress=None,
                weights: dict[str, float] | None = None) -> Plan:
    """Return the Plan that meets a budget for a model file; nothing is written.

    path: a model file or SavedModel folder. options: the clustering options
    (n_clusters: the largest k; per-tensor codebooks only). weights: an
    optional per-tensor importance multiplying the SSE (size targets). Raises
    BudgetError (an OptionsError) when the target cannot be met, with the
    nearest achievable figure; GpucompressError when a model that must run cannot.
    """
    if options.global_clusters:
        raise OptionsError("a budget (--target-size, --target-bits-per-weight, --max-output-error) picks a k per "
                           "tensor; it does not apply with --global_clusters (one codebook)")
    path = Path(path)
    started = time.perf_counter()
    probe = None
    if budget.max_output_error is not None:  # fail early (no TensorFlow, no inputs) before any clustering
        from .sensitivity import OutputProbe

        probe = OutputProbe(path, inputs=budget.inputs, signature=budget.signature,
                            architecture=budget.architecture)
    model = read_model(path)
    # The run's importances (a file, or computed from data once here): every clustering the plan
    # measures clusters as compress and pack will, and size targets weigh SSE by them.
    importance, source = gather_importance(options, model)
    weighing = {"importance": importance, "importance_source": source} if importance is not None else {}
    curves = measure_curves(model, options, on_progress=on_progress, weighing=weighing)
    if not curves.curves:
        raise OptionsError(f"{path}: no tensor to cluster, so no budget to allocate")
    measured = time.perf_counter()
    if probe is None:
        plan = _plan_size(path, options, budget, curves, weights, weighing)
    else:
        plan = _plan_error(path, options, budget, curves, probe, weighing)
    plan.seconds.update({"curves": measured - started, "curve_runs": curves.seconds["runs"],
                         "total": time.perf_counter() - started})
    return plan


def _size_target(budget: BudgetOptions, curves: CurveSet) -> tuple[dict, float]:
    if budget.target_size is not None:
        return {"kind": "target_size", "value": budget.target_size}, float(budget.target_size)
    values = sum(curve.size for curve in curves.curves)
    return ({"kind": "target_bits_per_weight", "value": budget.target_bits_per_weight},
            budget.target_bits_per_weight * values / 8.0)


def _smallest(curves: CurveSet) -> float:
    return curves.fixed_bytes + sum(min(curve.points(), key=lambda p: p[1])[1] for curve in curves.curves)


def _plan_size(path, options, budget: BudgetOptions, curves: CurveSet, weights, weighing: dict) -> Plan:
    target, target_bytes = _size_target(budget, curves)
    table = sse_curves(curves, weights)
    values = sum(curve.size for curve in curves.curves)
    allowance = target_bytes - curves.fixed_bytes
    history = []
    best = None
    for attempt in range(budget.max_tries):
        try:
            allocation = allocate_bytes(table, allowance)
        except BudgetError:
            smallest = _smallest(curves)
            figure = (f"{smallest:,.0f} bytes" if target["kind"] == "target_size"
                      else f"{8 * smallest / values:.4g} bits per weight ({smallest:,.0f} bytes)")
            asked = (f"{target_bytes:,.0f} bytes" if target["kind"] == "target_size"
                     else f"{budget.target_bits_per_weight:g} bits per weight ({target_bytes:,.0f} bytes)")
            raise BudgetError(f"{target['kind']}: {asked} is below the smallest archive the choices reach "
                              f"(k=2 for every tensor, or kept exact where that is smaller): nearest "
                              f"achievable {figure}") from None
        clusters = {c.name: c.points()[i][0] for c, i in zip(curves.curves, allocation.choices)
                    if c.points()[i][0] is not None}
        size = encoded_size(path, options, clusters, weighing)
        predicted = curves.fixed_bytes + allocation.total_bytes
        history.append({"allowance": allowance, "predicted_bytes": predicted, "archive_bytes": size})
        log.info("budget try %d: predicted %.0f, archive %d bytes (target %.0f)", attempt + 1, predicted, size,
                 target_bytes)
        if size <= target_bytes and (best is None or allocation.total_distortion < best[0].total_distortion):
            best = (allocation, size)
        if size > target_bytes:
            # What this plan used, less the excess and a little more.
            allowance = allocation.total_bytes - (size - target_bytes) * 1.02 - 16
        elif size < (1 - SIZE_SLACK) * target_bytes and attempt + 1 < budget.max_tries:
            allowance = max(allowance, allocation.total_bytes) + (target_bytes - size) * 0.9  # most of the gap
        else:
            break
        if attempt and history[-2]["archive_bytes"] == size:
            break  # the same archive again: no allowance left to move
    if best is None:
        raise BudgetError(f"{target['kind']}: the archive stayed over {target_bytes:,.0f} bytes after "
                          f"{budget.max_tries} tries (last {history[-1]['archive_bytes']:,} bytes)")
    allocation, size = best
    return Plan(target, _rows(curves, allocation), curves.fixed_bytes + allocation.total_bytes,
                allocation.total_distortion if weights is None else
                sum(r.sse for r in _rows(curves, allocation)),
                archive_bytes=size, tries=len(history), exact=allocation.exact, history=history)


def _plan_error(path, options, budget: BudgetOptions, curves: CurveSet, probe, weighing: dict) -> Plan:
    from .sensitivity import probe_groups

    error = budget.max_output_error
    model = read_model(path)
    largest = cluster_weights(model.weights(), options, clusters={c.name: c.ks[-1] for c in curves.curves},
                              **weighing)
    outcomes = {t.name: t for t in largest.clustered()}
    by_name = {c.name: c for c in curves.curves}
    sensitivity, alone = {}, {}
    for group in probe_groups([c.name for c in curves.curves], budget.max_probe_runs):
        measured = probe.error({name: outcomes[name].values() for name in group})
        sse = sum(by_name[name].sse[-1] for name in group)
        for name in group:
            sensitivity[name] = (measured * measured / sse) if sse > 0 else 0.0
        alone[tuple(group)] = measured
    del largest, outcomes
    if all(value > error for value in alone.values()):
        group, value = min(alone.items(), key=lambda item: item[1])
        what = group[0] if len(group) == 1 else f"{len(group)} tensors from {group[0]}"
        raise BudgetError(f"max_output_error={error:g} is out of reach short of keeping every tensor exact: "
                          f"clustering the least sensitive ({what}) alone at its largest k already gives "
                          f"{value:.4g}; nearest achievable: {value:.4g}")
    table = [([b for _, b, _ in c.points()], [sensitivity[c.name] * sse for _, _, sse in c.points()])
             for c in curves.curves]
    allowance = (ERROR_MARGIN * error) ** 2
    history, best, tried = [], None, set()
    passing = failing = None  # the largest allowance that met E, the smallest that missed
    for attempt in range(budget.max_tries):
        try:
            allocation = allocate_distortion(table, allowance)
        except BudgetError:
            break
        clusters = {c.name: c.points()[i][0] for c, i in zip(curves.curves, allocation.choices)
                    if c.points()[i][0] is not None}
        if not clusters or allocation.choices in tried:
            break  # all exact, or a plan already measured: no run would tell more
        tried.add(allocation.choices)
        model = read_model(path)
        run = cluster_weights(model.weights(), options, clusters=clusters, **weighing)
        measured = probe.error({t.name: t.values() for t in run.clustered()})
        del run
        history.append({"allowance": allowance, "predicted_error": math.sqrt(allocation.total_distortion),
                        "output_error": measured, "clustered": len(clusters)})
        log.info("budget try %d: predicted error %.4g, measured %.4g", attempt + 1,
                 math.sqrt(allocation.total_distortion), measured)
        if measured <= error:
            if best is None or allocation.total_bytes < best[0].total_bytes:
                best = (allocation, measured)
            passing = allowance
            if measured >= LOOSEN_BELOW * error:
                break  # close enough to E: another run would gain little
        else:
            failing = allowance
        # Scale the allowance by how far the measured error is from the aim; between a passing and a
        # failing allowance, stay strictly between them (their geometric mean when the scaling leaves).
        proposal = allowance * (ERROR_MARGIN * error / measured) ** 2 if measured > 0 else allowance * 4
        if passing is not None and failing is not None and not passing < proposal < failing:
            proposal = math.sqrt(passing * failing)
        allowance = proposal
    if best is None:
        tried = min((h["output_error"] for h in history), default=None)
        nearest = min(alone.values())
        errors = ", ".join(f"{h['output_error']:.4g}" for h in history) or "none"
        raise BudgetError(f"max_output_error={error:g} was not met within {budget.max_tries} verifying runs "
                          f"(measured {errors}); "
                          f"nearest achievable: about {nearest if tried is None else min(tried, nearest):.4g} "
                          f"(clustering one group alone gives {nearest:.4g})")
    allocation, measured = best
    rows = _rows(curves, allocation, sensitivity)
    plan = Plan({"kind": "max_output_error", "value": error}, rows, curves.fixed_bytes + allocation.total_bytes,
                sum(r.sse for r in rows), output_error=measured, inputs_source=probe.inputs_source,
                runs=probe.runs, tries=len(history), exact=allocation.exact, history=history)
    plan.archive_bytes = encoded_size(path, options, plan.clusters, weighing)
    return plan


def format_plan(plan: Plan, *, top: int | None = None) -> str:
    """Return the plan as a table (one row per tensor, largest first; top: at most that many) and totals."""
    rows = sorted(plan.rows, key=lambda r: (-r.size, r.name))
    shown = rows if top is None else rows[:top]
    header = ("tensor", "values", "k", "expected SSE", "bytes", "sensitivity")
    table = [header] + [(r.name if len(r.name) <= 44 else "..." + r.name[-41:], f"{r.size:,}",
                         "exact" if r.k is None else str(r.k), f"{r.sse:.4g}", f"{r.bytes:,.0f}",
                         "-" if r.sensitivity is None else f"{r.sensitivity:.3g}") for r in shown]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} smaller tensors")
    ks = {}
    for r in plan.rows:
        key = "exact" if r.k is None else f"k={r.k}"
        ks[key] = ks.get(key, 0) + 1
    values = sum(r.size for r in plan.rows)
    lines.append(f"target {plan.target['kind']} = {plan.target['value']:g}; "
                 + ", ".join(f"{n} {key}" for key, n in sorted(ks.items(), key=lambda i: (i[0] == 'exact', len(i[0]), i[0]))))
    lines.append(f"predicted archive {plan.predicted_bytes:,.0f} bytes ({8 * plan.predicted_bytes / values:.3f} bits "
                 f"per clustered weight), total SSE {plan.predicted_sse:.6g}"
                 + ("" if plan.archive_bytes is None else f"; encoded archive {plan.archive_bytes:,} bytes"))
    if plan.output_error is not None:
        lines.append(f"measured output error {plan.output_error:.4g} (relative L2, worst output) on inputs "
                     f"{plan.inputs_source}; {plan.runs} model runs, {plan.tries} plan(s) verified")
    lines.append(f"allocation {'exact (proven optimal for its predicted budget)' if plan.exact else 'Lagrangian + fill (within one hull step)'}; "
                 f"planned in {plan.seconds.get('total', 0.0):.2f} s")
    return "\n".join(lines)
