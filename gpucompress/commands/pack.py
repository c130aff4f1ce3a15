"""`gpucompress pack`: cluster a model as `compress` does and write it as one compact archive."""
from __future__ import annotations

from ..codec.entropy import SPEED_TOLERANCE
from . import EXIT_OK, new_parser
from .budget import BUDGET_EXAMPLES, add_budget_arguments, budget_from_arguments, plan_from_arguments, print_plan
from .compress import add_clustering_arguments, granularity_note, options_from_arguments

PACK_EXAMPLES = """\
examples:
  gpucompress pack model.pb                     # writes model.pb.gpcz, 256 clusters per tensor
  gpucompress pack model.pb --n_clusters=16 -o model16.gpcz
  gpucompress pack model.pb.min                 # an already clustered model: indexed, not re-clustered
  gpucompress pack model.pb --speed-tolerance 0  # smallest archive (ans everywhere), slower unpack
  gpucompress pack model.keras                  # also model.h5 and SavedModel folders: writes model.keras.gpcz
  gpucompress unpack model.pb.gpcz              # writes model.pb.min, identical to `compress` output
"""


def add_subparser(subparsers) -> None:
    """Add the `pack` subcommand."""
    parser = new_parser(
        subparsers, "pack", help="cluster a model and write a compact archive (.gpcz)",
        description="Cluster a model's weights exactly as `compress` does, then store each clustered "
        "tensor as a codebook and entropy-coded indices, and the rest of the model with zstd. "
        "`gpucompress unpack` restores the model that `compress` writes, byte for byte.",
        epilog=PACK_EXAMPLES + "\n" + BUDGET_EXAMPLES,
    )
    parser.add_argument("model", help="frozen GraphDef (.pb), Keras model (.keras, .h5), .tflite or SavedModel folder, "
                        "or an already clustered one (.min)")
    parser.add_argument("-o", "--output", help="archive path (default MODEL.gpcz, e.g. model.pb.gpcz)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--no-zip-sizes", dest="zip_sizes", action="store_false",
                        help="skip measuring the zip sizes of the model and the .min (faster)")
    parser.add_argument("--speed-tolerance", type=float, default=SPEED_TOLERANCE, metavar="FRACTION",
                        help="pick a faster-decoding index coder (zstd over ans) when its stream is at most "
                        "this fraction larger than the smallest; 0 = always the smallest (default %(default)s)")
    parser.add_argument("--report", metavar="JSON",
                        help="write what happened to every tensor (k, error) and the budget's plan to this JSON file")
    group = parser.add_argument_group("calibration inputs of --max-output-error")
    group.add_argument("--inputs", metavar="NPZ", help="NumPy .npz with one array per model input "
                       "(default: generated from the input signature, as verify does)")
    group.add_argument("--signature", metavar="NAME", help="SavedModel: the signature to run (default serving_default)")
    group.add_argument("--architecture", metavar="MODEL",
                       help="weights-only .weights.h5: the .keras or .h5 model they belong to")
    add_budget_arguments(parser)
    add_clustering_arguments(parser)
    parser.set_defaults(handler=run_pack)


def _row(label: str, size: int, reference: int) -> str:
    return f"  {label:<34} {size:>14,} bytes  {reference / max(size, 1):7.2f}x"


def run_pack(arguments) -> int:
    from pathlib import Path

    from ..errors import OptionsError
    from ..files import check_output_path
    from ..packing import default_archive_output, pack_file
    from ..progress import progress_bar, progress_wanted
    from ..report import build_report, write_report

    options = options_from_arguments(arguments)
    budget = budget_from_arguments(arguments)
    if (budget is None or budget.max_output_error is None) and (
            arguments.inputs or arguments.signature or arguments.architecture):
        raise OptionsError("--inputs, --signature and --architecture apply with --max-output-error only")
    output = Path(arguments.output) if arguments.output else default_archive_output(arguments.model)
    dry = budget is not None and arguments.dry_run
    if not dry:
        check_output_path(output, [Path(arguments.model)], overwrite=arguments.overwrite)
        if arguments.report:
            check_output_path(arguments.report, [Path(arguments.model), output], overwrite=arguments.overwrite)
    plan = None
    with progress_bar(progress_wanted(arguments.quiet), "pack") as progress:
        if budget is not None:
            plan = plan_from_arguments(arguments, options, budget, progress)
        if dry:
            summary = None
        else:
            summary = pack_file(arguments.model, arguments.output, options,
                                overwrite=arguments.overwrite, zip_sizes=arguments.zip_sizes,
                                speed_tolerance=arguments.speed_tolerance, on_progress=progress,
                                clusters=None if plan is None else plan.clusters)
    if summary is None:
        if not arguments.quiet:
            print_plan(plan)
            print("dry run: nothing written")
        return EXIT_OK
    if arguments.report:
        report = build_report(summary.run, options=options, input_path=summary.input_path,
                              output_path=summary.output_path, input_bytes=summary.sizes["original"],
                              output_bytes=summary.sizes["archive"], device=summary.device,
                              seconds=summary.seconds, command="pack")
        if plan is not None:
            report["budget"] = plan.to_dict()
        write_report(report, arguments.report)
    if arguments.quiet:
        return EXIT_OK
    sizes, seconds = summary.sizes, summary.seconds
    clustered = summary.run.clustered()
    coders = ", ".join(f"{name} {count}" for name, count in sorted(summary.coders.items()) if count)
    print(f"wrote {summary.output_path}")
    k = options.n_clusters if plan is None else "per tensor (budget)"
    print(f"clustered {len(clustered)} of {len(summary.run.tensors)} constant tensors, k={k}"
          f"{' (global codebook)' if options.global_clusters else ''}{granularity_note(options)}, on {summary.device}; "
          f"{summary.coded} tensors indexed ({coders})")
    print(f"time {seconds['total']:.2f} s (parse {seconds['parse']:.2f}, cluster {seconds['cluster']:.2f}, "
          f"encode {seconds['encode']:.2f}, verify+write {seconds['verify']:.2f}, zip {seconds['zip']:.2f})")
    original = sizes["original"]
    print("sizes (x = smaller than the original):")
    print(_row("original", original, original))
    if "original_zip" in sizes:
        print(_row("zip of original", sizes["original_zip"], original))
    print(_row(".min (clustered model)", sizes["min"], original))
    if "min_zip" in sizes:
        print(_row("zip of .min", sizes["min_zip"], original))
    print(_row("archive", sizes["archive"], original))
    bound = sizes["bound"] + sizes["rest"]
    print(_row("entropy bound + compressed rest", bound, original)
          + f"  (bound {sizes['bound']:,} + rest {sizes['rest']:,}; archive {sizes['archive'] / max(bound, 1):.4f}x)")
    if plan is not None:
        print()
        print_plan(plan, top=8)
        target = plan.target
        if target["kind"] != "max_output_error":
            wanted = target["value"] if target["kind"] == "target_size" else \
                target["value"] * sum(r.size for r in plan.rows) / 8
            print(f"archive {sizes['archive']:,} bytes = {sizes['archive'] / wanted:.2%} of the target {wanted:,.0f}")
    if arguments.report:
        print(f"wrote report {arguments.report}")
    return EXIT_OK
