"""The budget flags of `compress` and `pack` (--target-size, --target-bits-per-weight, --max-output-error,
--dry-run) and the step that turns them into a per-tensor plan before anything is written."""
from __future__ import annotations

import argparse
import math

BUDGET_EXAMPLES = """\
budgets (one k per tensor, at most --n_clusters; sizes are of the archive `pack` writes):
  gpucompress pack model.pb --target-size 2M              # least total SSE in a 2 MiB archive
  gpucompress pack model.pb --target-bits-per-weight 3.5  # archive bits over the clustered weights
  gpucompress pack model.pb --max-output-error 0.02 --inputs calib.npz   # smallest archive within 2%
  gpucompress compress model.keras --max-output-error 0.01 --dry-run    # print the plan, write nothing
"""


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} should be a finite number > 0")
    return value


def _size(text: str) -> int:
    from ..limits import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error} (a number of bytes > 0)") from None


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the budget flags (one target at most) and --dry-run."""
    group = parser.add_argument_group("budget: a codebook size per tensor (at most --n_clusters), chosen from "
                                      "each tensor's measured error and archive bytes at k = 2, 4, ... and exact")
    targets = group.add_mutually_exclusive_group()
    targets.add_argument("--target-size", "--target_size", type=_size, metavar="BYTES",
                         help="archive bytes (pack's .gpcz; e.g. 2M, 500K, 1500000): least total squared error "
                         "that fits, within 2%% of it")
    targets.add_argument("--target-bits-per-weight", "--target_bits_per_weight", type=_positive_number,
                         metavar="B", help="the archive's bits over the values of the tensors that are clustered")
    targets.add_argument("--max-output-error", "--max_output_error", type=_positive_number, metavar="E",
                         help="smallest archive whose outputs stay within relative L2 error E of the original "
                         "(verify's measure) on --inputs, or inputs generated from the signature; runs the "
                         "model (needs TensorFlow)")
    group.add_argument("--dry-run", "--dry_run", action="store_true",
                       help="with a budget: print the per-tensor plan and predicted totals, write nothing")


def budget_from_arguments(arguments):
    """Return the BudgetOptions named by parsed arguments, or None without a budget flag.

    Raises OptionsError for --dry-run without a budget.
    """
    from ..errors import OptionsError
    from ..options import BudgetOptions

    if arguments.target_size is None and arguments.target_bits_per_weight is None \
            and arguments.max_output_error is None:
        if arguments.dry_run:
            raise OptionsError("--dry-run applies with a budget (--target-size, --target-bits-per-weight or "
                               "--max-output-error)")
        return None
    running = arguments.max_output_error is not None
    return BudgetOptions(
        target_bits_per_weight=arguments.target_bits_per_weight, target_size=arguments.target_size,
        max_output_error=arguments.max_output_error,
        inputs=getattr(arguments, "inputs", None) if running else None,
        signature=getattr(arguments, "signature", None) if running else None,
        architecture=getattr(arguments, "architecture", None) if running else None)


def plan_from_arguments(arguments, options, budget, progress):
    """Return the Plan of a budget for arguments.model (gpucompress.budget.plan.plan_budget)."""
    from ..budget.plan import plan_budget

    return plan_budget(arguments.model, options, budget, on_progress=progress)


def print_plan(plan, *, top: int | None = None) -> None:
    """Print a plan's table and totals (people's output: stdout)."""
    from ..budget.plan import format_plan

    print(format_plan(plan, top=top))
