"""`gpucompress verify`: run a model and its compressed copy on the same inputs and compare the outputs."""
from __future__ import annotations

import json
import sys

from . import EXIT_ERROR, EXIT_OK, new_parser

VERIFY_EXAMPLES = """\
examples:
  gpucompress verify model.pb model.pb.min                       # 32 generated samples
  gpucompress verify model.pb model.pb.min --inputs batch.npz    # your own inputs, one array per input name
  gpucompress verify model.pb model.pb.min --fail-above 0.01     # exit 1 when an output is off by > 1%
  gpucompress verify model.keras model.min.keras                 # .keras / .h5 through Keras
  gpucompress verify saved_dir saved_dir.min --signature serve   # a SavedModel through a signature
  gpucompress verify m.weights.h5 m.min.weights.h5 --architecture m.keras   # weights only
"""


def add_subparser(subparsers) -> None:
    """Add the `verify` subcommand."""
    # From options, not verify: building the parser must not import the runners (every CLI call builds it).
    from ..options import VERIFY_SAMPLES as DEFAULT_SAMPLES

    parser = new_parser(
        subparsers, "verify", help="compare the outputs of a model and its compressed copy",
        description="Run the original and the compressed model on the same inputs and report, per "
        "output, the max absolute error, the relative L2 error, the cosine similarity and, for "
        "class scores (2-D outputs), how often the top-1 class agrees. Every format compress reads: "
        "frozen GraphDefs, SavedModel folders (through a signature), .keras and .h5 files (through "
        "Keras). Needs TensorFlow.",
        epilog=VERIFY_EXAMPLES,
    )
    parser.add_argument("original", help="the model before compression")
    parser.add_argument("compressed", help="the compressed model")
    parser.add_argument("--inputs", metavar="NPZ",
                        help="NumPy .npz with one array per model input (by input name); "
                        "default: generated from the input signature")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                        help="rows generated for unknown (batch) dimensions (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default %(default)s)")
    parser.add_argument("--fail-above", "--fail_above", type=float, default=None, metavar="REL",
                        help="exit 1 when an output's relative L2 error exceeds REL (e.g. 0.01)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument("--signature", default=None, metavar="NAME",
                        help="SavedModel: the signature to run (default serving_default)")
    parser.add_argument("--architecture", default=None, metavar="MODEL",
                        help="weights-only .weights.h5: the .keras or .h5 model the weights belong to")
    parser.set_defaults(handler=run_verify)


def run_verify(arguments) -> int:
    from ..errors import OptionsError
    from ..verify import format_verification, verify_models

    if arguments.fail_above is not None and not arguments.fail_above >= 0:
        raise OptionsError(f"--fail-above={arguments.fail_above} should be >= 0.")
    verification = verify_models(arguments.original, arguments.compressed, inputs=arguments.inputs,
                                 samples=arguments.samples, seed=arguments.seed, signature=arguments.signature,
                                 architecture=arguments.architecture)
    if arguments.json:
        print(json.dumps(verification.to_dict(), indent=1, allow_nan=False))
    elif not arguments.quiet:
        print(format_verification(verification))
    if arguments.fail_above is not None and not verification.passes(arguments.fail_above):
        print(f"gpucompress: verify failed: relative error {verification.worst_relative_error:.3g} "
              f"exceeds --fail-above {arguments.fail_above:g}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
