"""`gpucompress compress`: cluster a model's weights and write a model used exactly like the input."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..options import DEVICES, ENGINES, GRANULARITIES, INTEGER_OBJECTIVES, CompressOptions
from . import EXIT_OK, new_parser
from .budget import BUDGET_EXAMPLES, add_budget_arguments, budget_from_arguments, plan_from_arguments, print_plan

log = logging.getLogger(__name__)

COMPRESS_EXAMPLES = """\
examples:
  gpucompress compress model.pb                      # writes model.pb.min, 256 clusters per tensor
  gpucompress compress model.pb --n_clusters=16      # 4-bit codebooks
  gpucompress compress model.pb --global_clusters --min_n_weights=1024
  gpucompress compress model.pb --whitelisted logits/weights,logits/biases -o small.pb
  gpucompress compress model.pb --device cpu --init density
  gpucompress compress model.pb --report report.json   # every tensor's error, k, SNR, time as JSON

  gpucompress compress model.keras                   # writes model.min.keras (also .h5)
  gpucompress compress model.keras --verify          # also run both and print the output error
  gpucompress compress saved_model_dir --all-variables   # writes saved_model_dir.min
  gpucompress compress saved_model_dir --to-graphdef    # frozen serving signature: saved_model_dir.min.pb

  gpucompress compress model.tflite --n_clusters 16   # writes model.min.tflite (float32/float16/int8 weights)
  gpucompress compress model.tflite --n_clusters 16 --tflm -o model.tflm.tflite   # TFLite Micro LUT form

  gpucompress compress model.pb --engine faiss       # faiss k-means (pip install 'gpucompress[faiss]')

  gpucompress compress model.keras --n_clusters 16 --granularity per-channel   # a codebook per output channel
  gpucompress compress model.pb --n_clusters 16 --granularity grouped --group-size 8
  gpucompress compress model.tflite --keep-zeros     # pruned weights stay exactly 0
  gpucompress compress model.keras --n_clusters 8 --importance grads.npz   # weighted by importances
  gpucompress compress model.keras --n_clusters 8 --importance-from-data inputs.npz
"""


def _comma_list(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def add_clustering_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the clustering options shared by every subcommand that clusters (seed flags included)."""
    defaults = CompressOptions()
    group = parser.add_argument_group("clustering (the 2016 script's flags are accepted verbatim)")
    group.add_argument("--n_clusters", "--n-clusters", type=int, default=defaults.n_clusters,
                       metavar="N", help="codebook size per tensor (default %(default)s = 8 bits); at most 4096 "
                       "with --method optimal (memory grows as k squared), 65536 with --method lloyd")
    group.add_argument("--global_clusters", "--global-clusters", action="store_true",
                       help="one codebook for all clustered tensors")
    group.add_argument("--min_n_weights", "--min-n-weights", type=int, default=defaults.min_n_weights,
                       metavar="N", help="global mode: tensors with fewer values stay as they are "
                       "(default %(default)s)")
    group.add_argument("--whitelisted", type=_comma_list, action="append", default=[],
                       metavar="A,B", help="comma-separated weight names never clustered (repeatable)")
    group.add_argument("--all-variables", "--all_variables", action="store_true",
                       help="SavedModel/Keras: cluster every float variable, not only weight "
                       "matrices (rank >= 2); optimizer state is always kept")
    group.add_argument("--device", choices=DEVICES, default=defaults.device,
                       help="auto: GPU when CuPy sees one, else CPU; results are identical "
                       "(default %(default)s)")
    group.add_argument("--method", default=defaults.method,
                       help="clustering method: optimal (within about 1%% of the optimal error: exact DP "
                       "over fine bins, then Lloyd; ignores --init) or lloyd (Lloyd from --init, as Deep "
                       "Compression) (default %(default)s)")
    group.add_argument("--init", default=defaults.init,
                       help="initial centroids of --method lloyd: linear (Deep Compression), density, kmeans++ "
                       "(default %(default)s)")
    group.add_argument("--max-iter", "--max_iter", type=int, default=defaults.max_iter,
                       metavar="N", help="most Lloyd iterations per tensor (default %(default)s)")
    group.add_argument("--seed", type=int, default=defaults.seed,
                       help="seed of the random initializers (default %(default)s)")
    group.add_argument("--engine", choices=ENGINES, default=defaults.engine,
                       help="gpucompress: exact, bit-identical on CPU and GPU; faiss: faiss k-means "
                       "(float32, subsampled, 25 iterations; results NOT bit-identical across devices "
                       "or faiss versions; --method/--init do not apply) (default %(default)s)")
    group.add_argument("--granularity", choices=GRANULARITIES, default=defaults.granularity,
                       help="one codebook per tensor, per output channel, or per group of --group-size channels "
                       "(the last group smaller when G does not divide the channels) (default %(default)s)")
    group.add_argument("--group-size", "--group_size", type=int, default=None, metavar="G",
                       help="--granularity grouped: channels per codebook (1..the channel count)")
    group.add_argument("--channel-axis", "--channel_axis", type=int, default=None, metavar="AXIS",
                       help="per-channel/grouped: the channel axis of every tensor (negative from the end; "
                       "default: each tensor's output-channel axis by layer kind, else the last)")
    zeros = group.add_mutually_exclusive_group()
    zeros.add_argument("--keep-zeros", "--keep_zeros", dest="keep_zeros", action="store_true", default=None,
                       help="exact zeros stay exactly 0 and are not clustered (k - 1 centroids for the rest); "
                       "default: on for each tensor more than 30%% zeros, as the report says")
    zeros.add_argument("--no-keep-zeros", "--no_keep_zeros", dest="keep_zeros", action="store_false",
                       help="cluster zeros like any value, whatever their share")
    group.add_argument("--integer-objective", choices=INTEGER_OBJECTIVES, default=defaults.integer_objective,
                       help="int8/int16 TFLite weights with per-channel scales: minimise their dequantized error "
                       "(each channel's squared error weighs its scale squared) or the integers' own error "
                       "(every channel alike) (default %(default)s)")
    add_importance_arguments(parser)


def add_importance_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --importance and --importance-from-data (weighted k-means)."""
    group = parser.add_argument_group("importance weights (weighted k-means: minimise sum w*(x-c)^2)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--importance", metavar="NPZ",
                        help="NumPy .npz of per-weight importances (non-negative, one array of the weight's "
                        "shape per weight name, e.g. squared gradients); weights without an entry are "
                        "clustered unweighted")
    choice.add_argument("--importance-from-data", metavar="INPUTS_NPZ",
                        help="compute the importances with TensorFlow: squared gradients of the outputs' "
                        "energy sum(y^2) on these inputs (.npz, one array per model input; Keras .keras/.h5 "
                        "and frozen GraphDef models)")


def options_from_arguments(arguments: argparse.Namespace) -> CompressOptions:
    """Return the CompressOptions named by parsed arguments (validated; raises OptionsError)."""
    return CompressOptions(
        n_clusters=arguments.n_clusters,
        global_clusters=arguments.global_clusters,
        min_n_weights=arguments.min_n_weights,
        whitelisted=tuple(sorted({name for names in arguments.whitelisted for name in names})),
        device=arguments.device,
        method=arguments.method,
        init=arguments.init,
        max_iter=arguments.max_iter,
        seed=arguments.seed,
        all_variables=arguments.all_variables,

        engine=arguments.engine,
        granularity=arguments.granularity,
        group_size=arguments.group_size,
        channel_axis=arguments.channel_axis,
        keep_zeros=arguments.keep_zeros,
        integer_objective=arguments.integer_objective,
        importance=getattr(arguments, "importance", None),
        importance_from_data=getattr(arguments, "importance_from_data", None),
    )


def granularity_note(options: CompressOptions) -> str:
    """Return the summary line's note on codebook granularity: "" per tensor, else ", per-channel" or
    ", grouped by G" (the codebook count and ragged groups are in the table's footer)."""
    if options.granularity == "per-tensor":
        return ""
    return ", per-channel" if options.granularity == "per-channel" else f", grouped by {options.group_size}"


def add_subparser(subparsers) -> None:
    """Add the `compress` subcommand."""
    parser = new_parser(
        subparsers, "compress", help="cluster the weights of a model (frozen GraphDef, SavedModel, .keras, .h5, .tflite)",
        description="Cluster a model's weights with 1-D k-means and write a model of the same format, "
        "used exactly like the input. Formats, detected from the path: a frozen GraphDef (.pb; every "
        "floating Const), a SavedModel folder (its checkpoint's variables), a Keras .keras file, a Keras "
        "HDF5 file (.h5, .hdf5, .weights.h5). For SavedModel and Keras models only the weights proper "
        "(float variables of rank >= 2) are clustered unless --all-variables; optimizer state never.",
        epilog=COMPRESS_EXAMPLES + "\n" + BUDGET_EXAMPLES,
    )
    parser.add_argument("model", help="frozen GraphDef (.pb), SavedModel folder, .keras, .h5 or .tflite file")
    parser.add_argument("-o", "--output", help="output path (default: model.pb.min, model.min.keras, "
                        "model.min.h5, model.min.tflite, SAVED_MODEL_DIR.min)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--zip-sizes", action="store_true",
                        help="also print the zipped sizes of input and output")
    parser.add_argument("--to-graphdef", action="store_true",
                        help="SavedModel input: freeze its serving_default signature into a frozen GraphDef "
                        "and write that, clustered (default output SAVED_MODEL_DIR.min.pb)")
    parser.add_argument("--tflm", action="store_true",
                        help=".tflite input: write TFLite Micro's compressed form (a lookup table per tensor and "
                        "bit-packed indices, DECODE operators; k <= 128; default output MODEL.tflm.tflite)")
    add_report_arguments(parser)
    add_verify_arguments(parser)
    add_budget_arguments(parser)
    add_clustering_arguments(parser)
    parser.set_defaults(handler=run_compress)


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --verify and the options verify needs (inputs, SavedModel signature, architecture)."""
    group = parser.add_argument_group("verify (after writing; needs TensorFlow)")
    group.add_argument("--verify", action="store_true",
                       help="run the input and the output on the same inputs and print the output error "
                       "(as `gpucompress verify`); skipped, with a line saying so, without TensorFlow")
    group.add_argument("--inputs", metavar="NPZ", help="--verify: NumPy .npz with one array per model input "
                       "(default: generated from the input signature)")
    group.add_argument("--signature", metavar="NAME",
                       help="--verify, SavedModel: the signature to run (default serving_default)")
    group.add_argument("--architecture", metavar="MODEL",
                       help="--verify, weights-only .weights.h5: the .keras or .h5 model they belong to")


def verify_line(arguments, output) -> str:
    """Return the summary line of `compress --verify`: the output error, or why verify was skipped.

    Raises what verify_models raises (a model TensorFlow cannot load, a run that fails).
    """
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        return "verify: skipped (TensorFlow is not installed: pip install 'gpucompress[tf]')"
    if arguments.to_graphdef:
        return ("verify: skipped (--to-graphdef writes another format than the input's; run "
                "`gpucompress verify` on a frozen graph of the input)")
    from ..verify import verify_models

    verification = verify_models(arguments.model, output, inputs=arguments.inputs,
                                 signature=arguments.signature, architecture=arguments.architecture)
    worst = max(verification.outputs, key=lambda o: (o.relative_error != o.relative_error, o.relative_error))
    top1 = "" if worst.top1_agreement is None else f", top-1 agree {100 * worst.top1_agreement:.1f}%"
    return (f"verify: output error {worst.relative_error:.3g} relative L2 (worst of {len(verification.outputs)} "
            f"outputs: {worst.name}), max abs {worst.max_abs_error:.3g}{top1}, on {verification.samples} "
            f"samples, inputs {verification.inputs_source}")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --report and --top (the report and summary table of any command that clusters)."""
    parser.add_argument("--report", metavar="JSON",
                        help="write what happened to every tensor (k, error, SNR, time) to this JSON file")
    parser.add_argument("--top", type=int, default=8, metavar="N",
                        help="clustered tensors in the printed summary, largest first (default %(default)s)")


def _default_output(arguments) -> str:
    """Return the output path compress_file picks when -o is not given."""
    # Imported here: a plain compress never needs the SavedModel freezer or the TFLite Micro writer.
    if arguments.to_graphdef:
        from ..models.freeze import frozen_output

        return frozen_output(arguments.model)
    if arguments.tflm:
        from ..models.tflm import tflm_output

        return tflm_output(arguments.model)
    from ..models import default_output

    return default_output(arguments.model)


def run_compress(arguments) -> int:
    from ..api import compress_file
    from ..errors import OptionsError
    from ..files import check_output_path
    from ..progress import progress_bar, progress_wanted
    from ..select import left_out_notice
    from ..report import BatchTimer, format_summary, report_from_summary, write_report

    options = options_from_arguments(arguments)
    budget = budget_from_arguments(arguments)
    if not arguments.verify and (budget is None or budget.max_output_error is None) and (
            arguments.inputs or arguments.signature or arguments.architecture):
        raise OptionsError("--inputs, --signature and --architecture apply with --verify or --max-output-error only")
    if budget is not None and (arguments.to_graphdef or arguments.tflm):
        raise OptionsError("a budget (--target-size, --target-bits-per-weight, --max-output-error) does not "
                           "apply with --to-graphdef or --tflm")
    output = arguments.output or _default_output(arguments)
    if arguments.report and not (budget is not None and arguments.dry_run):
        check_output_path(arguments.report, [Path(arguments.model), Path(output)], overwrite=arguments.overwrite)
    plan = None
    with progress_bar(progress_wanted(arguments.quiet), "compress") as progress:
        if budget is not None:
            if not arguments.dry_run:  # refuse an existing output before the plan's model runs
                check_output_path(Path(output), [Path(arguments.model)], overwrite=arguments.overwrite,
                                  directory=Path(arguments.model).is_dir())
            plan = plan_from_arguments(arguments, options, budget, progress)
        if plan is not None and arguments.dry_run:
            summary = None
        else:
            timer = BatchTimer()
            summary = compress_file(arguments.model, arguments.output, options,
                                    overwrite=arguments.overwrite, zip_sizes=arguments.zip_sizes, on_batch=timer,
                                    to_graphdef=arguments.to_graphdef, tflm=arguments.tflm,
                                    on_progress=progress, clusters=None if plan is None else plan.clusters)
    if summary is None:
        if not arguments.quiet:
            print_plan(plan)
            print("dry run: nothing written")
        return EXIT_OK
    log.info("%d engine batches", len(timer.batches))
    clustered = summary.run.clustered()
    weights = sum(t.size for t in clustered)
    seconds = summary.seconds
    # Built only when written or printed: per-tensor error figures cost a pass over every tensor.
    report = report_from_summary(summary, options, timer) if arguments.report or not arguments.quiet else None
    if report is not None and plan is not None:
        report["budget"] = plan.to_dict()
    if arguments.report:
        write_report(report, arguments.report)
        log.info("wrote report %s", arguments.report)
    verified = verify_line(arguments, summary.output_path) if arguments.verify else None
    notice = left_out_notice(summary.run.tensors)
    if notice:
        log.warning("%s", notice)
    if arguments.quiet:
        if verified and verified.startswith("verify: skipped"):
            log.warning("%s", verified)
        return EXIT_OK
    print(f"wrote {summary.output_path}")
    print(f"clustered {len(clustered)} of {len(summary.run.tensors)} constant tensors, "
          f"{weights:,} weights, k={options.n_clusters if plan is None else 'per tensor (budget)'}"
          f"{' (global codebook)' if options.global_clusters else ''}{granularity_note(options)}, on {summary.device}")
    weighing = f", importance {seconds['importance']:.2f}" if options.importance_from_data else ""
    print(f"time {seconds['total']:.2f} s (parse {seconds['parse']:.2f}{weighing}, select {seconds['select']:.2f}, "
          f"cluster {seconds['cluster']:.2f}, write {seconds['write']:.2f})")
    print(f"size {summary.input_bytes:,} -> {summary.output_bytes:,} bytes")
    if summary.zip_bytes:
        print(f"zipped {summary.zip_bytes['input']:,} -> {summary.zip_bytes['output']:,} bytes "
              f"({summary.zip_bytes['input'] / max(summary.zip_bytes['output'], 1):.2f}x smaller)")
    if clustered and arguments.top > 0:
        print()
        print(format_summary(report, top=arguments.top))
    if plan is not None:
        print()
        print_plan(plan, top=arguments.top)
    if verified:
        print(verified)
    if arguments.report:
        print(f"wrote report {arguments.report}")
    return EXIT_OK
