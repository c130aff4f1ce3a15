"""Choose one point per curve: least total distortion within a byte budget, or fewest bytes within a
distortion budget. Pure arithmetic on arrays of (bytes, distortion); no model, no TensorFlow.

A curve is a list of choices (bytes, distortion), e.g. one per codebook size
plus "kept exact". The distortion is whatever the caller wants summed: SSE,
an importance-weighted SSE, a predicted output error squared (plan.py); the
allocation never looks inside.

Method (rate-distortion allocation, as in Shoham and Gersho 1988): for a
multiplier lambda >= 0 each curve independently takes the choice minimising
distortion + lambda * bytes; those choices are optimal for their own total
bytes. Only points on each curve's lower convex hull are ever taken, so the
sweep over lambda is the sequence of hull steps sorted by efficiency
(distortion saved per byte), taken greedily: exact whenever the budget lands
on a total the sweep reaches. Between two such totals a last pass spends what
is left on the best single upgrade (or, for a distortion budget, the best
downgrade) that still fits, off the hull too; the result always meets its
budget, and is then within one hull step of the optimum (tests/test_budget.py
compares with brute force).

Then an exact pass: a dynamic program over the curves that keeps the Pareto
front of partial sums (bytes, distortion), pruned by the budget and by the
sweep's answer (a partial sum that cannot beat it, even with the best
remaining choices, is dropped). It returns the optimum whenever the front
stays within MAX_FRONT states at every curve, which small models and tests
reach; otherwise the sweep's answer stands (Allocation.exact says which).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy

from ..errors import OptionsError


class BudgetError(OptionsError):
    """No choice of points meets the budget; the message names the nearest achievable figure."""


@dataclass(frozen=True)
class Allocation:
    """The chosen point of each curve (an index into it), and the totals of the choice."""

    choices: tuple[int, ...]
    total_bytes: float
    total_distortion: float
    exact: bool = False


# Most partial sums the exact pass keeps per curve before it gives up (memory and time bound:
# one merge sorts MAX_FRONT x choices pairs).
MAX_FRONT = 1 << 14


def _exact(curves, budget: float, incumbent: tuple[int, ...], minimise: int) -> tuple[int, ...] | None:
    """Return the optimal choices (minimise axis `minimise`: 0 bytes, 1 distortion; the other
    axis <= budget), or None when the front outgrows MAX_FRONT."""
    limit = 1 - minimise
    best = _totals(curves, incumbent)[minimise]
    rest_limit = numpy.cumsum([c[limit].min() for c in curves][::-1])[::-1].tolist() + [0.0]
    rest_goal = numpy.cumsum([c[minimise].min() for c in curves][::-1])[::-1].tolist() + [0.0]
    slack = 1e-9 * max(abs(budget), 1.0)
    front_limit = numpy.zeros(1)
    front_goal = numpy.zeros(1)
    history = []  # per curve: (parent index, choice) of each state kept
    for c, curve in enumerate(curves):
        new_limit = (front_limit[:, None] + curve[limit][None, :]).reshape(-1)
        new_goal = (front_goal[:, None] + curve[minimise][None, :]).reshape(-1)
        keep = ((new_limit + rest_limit[c + 1] <= budget + slack)
                & (new_goal + rest_goal[c + 1] <= best + slack))
        index = numpy.flatnonzero(keep)
        order = index[numpy.lexsort((new_goal[index], new_limit[index]))]
        goal = new_goal[order]
        # Pareto: as the limited axis grows, the goal must strictly fall.
        running = numpy.minimum.accumulate(goal)
        pareto = numpy.ones(order.size, dtype=bool)
        pareto[1:] = goal[1:] < running[:-1]
        order = order[pareto]
        if order.size == 0 or order.size > MAX_FRONT:
            return None
        width = curve[0].size
        history.append((order // width, order % width))
        front_limit, front_goal = new_limit[order], new_goal[order]
    state = int(numpy.argmin(front_goal))
    choices = []
    for parents, picks in reversed(history):
        choices.append(int(picks[state]))
        state = int(parents[state])
    return tuple(reversed(choices))


def _best(curves, choices, budget: float, minimise: int) -> Allocation:
    """Return the exact optimum when the exact pass finds it (never worse than choices), else choices."""
    exact = _exact(curves, budget, tuple(choices), minimise)
    if exact is not None and _totals(curves, exact)[minimise] <= _totals(curves, choices)[minimise]:
        return Allocation(exact, *_totals(curves, exact), exact=True)
    return Allocation(tuple(choices), *_totals(curves, choices), exact=False)


def lower_hull(bytes_: Sequence[float], distortion: Sequence[float]) -> list[int]:
    """Return the indices of a curve's lower convex hull, by bytes ascending (distortion descending).

    Points that some other point beats on both counts, and points above the
    segment joining their neighbours, are left out; of equal points the first wins.
    """
    order = sorted(range(len(bytes_)), key=lambda i: (bytes_[i], distortion[i], i))
    frontier = []
    for i in order:  # Pareto front: strictly less distortion as bytes grow
        if not frontier or distortion[i] < distortion[frontier[-1]]:
            frontier.append(i)
    hull: list[int] = []
    for i in frontier:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or above the segment a..i: drop it (cross product, no division).
            left = (distortion[a] - distortion[b]) * (bytes_[i] - bytes_[b])
            right = (distortion[b] - distortion[i]) * (bytes_[b] - bytes_[a])
            if left <= right:
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def _check(curves) -> list[tuple[numpy.ndarray, numpy.ndarray]]:
    checked = []
    for index, (bytes_, distortion) in enumerate(curves):
        bytes_ = numpy.asarray(bytes_, dtype=numpy.float64)
        distortion = numpy.asarray(distortion, dtype=numpy.float64)
        if bytes_.ndim != 1 or bytes_.shape != distortion.shape or bytes_.size == 0:
            raise ValueError(f"curves[{index}] should be two 1-D arrays of the same length >= 1.")
        if not (numpy.isfinite(bytes_).all() and numpy.isfinite(distortion).all()):
            raise ValueError(f"curves[{index}] holds NaN or infinite values.")
        checked.append((bytes_, distortion))
    return checked


def _steps(curves, hulls):
    """Return every hull step (efficiency, curve, from, to), most efficient first (per curve in order)."""
    steps = []
    for c, ((bytes_, distortion), hull) in enumerate(zip(curves, hulls)):
        for position, (a, b) in enumerate(zip(hull, hull[1:])):
            efficiency = (distortion[a] - distortion[b]) / (bytes_[b] - bytes_[a])
            steps.append((-efficiency, c, position, a, b))
    steps.sort()
    return steps


def _totals(curves, choices) -> tuple[float, float]:
    return (float(sum(curve[0][i] for curve, i in zip(curves, choices))),
            float(sum(curve[1][i] for curve, i in zip(curves, choices))))


def allocate_bytes(curves: Sequence[tuple[Sequence[float], Sequence[float]]], budget: float) -> Allocation:
    """Return the choices of least total distortion whose total bytes are <= budget.

    curves: one (bytes, distortion) pair of equal-length sequences per tensor.
    budget: total bytes allowed. Raises BudgetError when even the cheapest
    choice of every curve exceeds the budget (its message gives that total).
    """
    curves = _check(curves)
    hulls = [lower_hull(b, d) for b, d in curves]
    choices = [hull[0] for hull in hulls]
    used, _ = _totals(curves, choices)
    if used > budget:
        raise BudgetError(f"the smallest choice of every tensor needs {used:,.0f} bytes, over the budget of "
                          f"{budget:,.0f}")
    blocked = set()
    for _, c, position, a, b in _steps(curves, hulls):
        if c in blocked:
            continue
        cost = curves[c][0][b] - curves[c][0][a]
        if used + cost <= budget:
            choices[c], used = b, used + cost
        else:
            blocked.add(c)  # a curve's later hull steps come after this one
    _greedy_moves(curves, choices, budget, limited=0)
    return _best(curves, choices, budget, minimise=1)


def _greedy_moves(curves, choices, budget, limited: int) -> None:
    """Make the best single moves the budget still allows, one at a time, until none is left.

    limited: which coordinate of a curve point the budget bounds (0: bytes,
    1: distortion); each move is the one that saves most of the other. With
    limited=0 it spends the bytes left on upgrades (allocate_bytes), with 1 it
    takes bytes back by downgrades the distortion allows (allocate_distortion).
    """
    saved = 1 - limited
    total = _totals(curves, choices)[limited]
    while True:
        best = None
        for c, curve in enumerate(curves):
            bound, gain, i = curve[limited], curve[saved], choices[c]
            fits = (bound - bound[i] <= budget - total) & (gain < gain[i])
            if fits.any():
                saving = numpy.where(fits, gain[i] - gain, -numpy.inf)
                j = int(numpy.argmax(saving))
                if best is None or saving[j] > best[0]:
                    best = (saving[j], c, j)
        if best is None:
            return
        _, c, j = best
        total += curves[c][limited][j] - curves[c][limited][choices[c]]
        choices[c] = j


def allocate_distortion(curves: Sequence[tuple[Sequence[float], Sequence[float]]],
                        budget: float) -> Allocation:
    """Return the choices of fewest total bytes whose total distortion is <= budget.

    curves: as allocate_bytes. budget: total distortion allowed (>= 0). Raises
    BudgetError when even the least distortion of every curve exceeds it.
    """
    curves = _check(curves)
    hulls = [lower_hull(b, d) for b, d in curves]
    least = float(sum(d[hull[-1]] for (_, d), hull in zip(curves, hulls)))
    if least > budget:
        raise BudgetError(f"the least distortion of every tensor sums to {least:.6g}, over the budget of "
                          f"{budget:.6g}")
    choices = [hull[0] for hull in hulls]
    _, distortion_total = _totals(curves, choices)
    for _, c, position, a, b in _steps(curves, hulls):
        if distortion_total <= budget:
            break
        distortion_total -= curves[c][1][a] - curves[c][1][b]
        choices[c] = b
    _greedy_moves(curves, choices, budget, limited=1)
    return _best(curves, choices, budget, minimise=0)
