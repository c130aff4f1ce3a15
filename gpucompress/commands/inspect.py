"""`gpucompress inspect`: the weight tensors of a model, their statistics, and a histogram plot."""
from __future__ import annotations

import json
from pathlib import Path

from . import EXIT_OK, new_parser

INSPECT_EXAMPLES = """\
examples:
  gpucompress inspect model.pb                       # table of weight tensors, largest first
  gpucompress inspect model.pb --plot weights.png    # also a histogram of the weights
  gpucompress inspect model.pb.min --plot min.png    # a clustered model: centroids marked
  gpucompress inspect model.pb --json > model.json   # every tensor, machine-readable
"""


def add_subparser(subparsers) -> None:
    """Add the `inspect` subcommand."""
    parser = new_parser(
        subparsers, "inspect", help="list a model's weight tensors and plot their histogram",
        description="Show every weight tensor of a model (dtype, shape, values, distinct values, "
        "min/max/std, share of the file), the size of the model without its weights, and "
        "optionally a histogram of the weights with the centroids of a clustered model.",
        epilog=INSPECT_EXAMPLES,
    )
    parser.add_argument("model", help="model file (frozen GraphDef .pb, or any format compress reads)")
    parser.add_argument("--plot", metavar="IMAGE", help="write a histogram of the weights to this file, in the "
                        "format its extension names (.png, .pdf, .svg, ...; matplotlib writes it)")
    parser.add_argument("--largest", type=int, default=4, metavar="N",
                        help="tensors with their own histogram panel (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the inspection as JSON instead of a table")
    parser.add_argument("--top", type=int, default=20, metavar="N",
                        help="rows of the table, largest tensors first (default %(default)s; 0: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing plot file")
    parser.add_argument("--max-centroids", "--max_centroids", type=int, default=256, metavar="K",
                        help="a tensor of more values but at most K distinct ones (or at most K per channel "
                        "or group of channels: per-channel codebooks) looks clustered (default %(default)s)")
    parser.set_defaults(handler=run_inspect)


def run_inspect(arguments) -> int:
    from ..errors import OptionsError
    from ..files import check_output_path
    from ..inspect import format_table, inspect_model
    from ..models import read_model

    if arguments.largest < 0 or arguments.top < 0:
        raise OptionsError(f"--largest={arguments.largest} and --top={arguments.top} should be >= 0.")
    model = read_model(arguments.model)
    if arguments.plot:
        from ..plot import plot_format

        plot_format(arguments.plot)
        check_output_path(arguments.plot, [Path(arguments.model)], overwrite=arguments.overwrite)
    if arguments.max_centroids < 1:
        raise OptionsError(f"max_centroids={arguments.max_centroids} (--max-centroids) should be >= 1.")
    inspection = inspect_model(arguments.model, model=model, max_centroids=arguments.max_centroids)
    if arguments.plot:
        from ..plot import plot_weight_histograms

        plot_weight_histograms(model, inspection, arguments.plot, largest=arguments.largest)
    if arguments.json:
        print(json.dumps(inspection.to_dict(), indent=1, allow_nan=False))
    elif not arguments.quiet:
        print(format_table(inspection, limit=arguments.top or None))
        if arguments.plot:
            print(f"wrote {arguments.plot}")
    return EXIT_OK

