"""`gpucompress compress`: cluster a model's weights and write a model used exactly like the input."""
from __future__ import annotations

import argparse

from ..options import DEVICES, CompressOptions
from . import EXIT_OK, new_parser

COMPRESS_EXAMPLES = """\
examples:
  gpucompress compress model.pb                      # writes model.pb.min, 256 clusters per tensor
  gpucompress compress model.pb --n_clusters=16      # 4-bit codebooks
  gpucompress compress model.pb --global_clusters --min_n_weights=1024
  gpucompress compress model.pb --whitelisted logits/weights,logits/biases -o small.pb
  gpucompress compress model.pb --device cpu --init density
"""


def _comma_list(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def add_clustering_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the clustering options shared by every subcommand that clusters (seed flags included)."""
    defaults = CompressOptions()
    group = parser.add_argument_group("clustering (the 2016 script's flags are accepted verbatim)")
    group.add_argument("--n_clusters", "--n-clusters", type=int, default=defaults.n_clusters,
                       metavar="N", help="codebook size per tensor (default %(default)s = 8 bits)")
    group.add_argument("--global_clusters", "--global-clusters", action="store_true",
                       help="one codebook for all clustered tensors")
    group.add_argument("--min_n_weights", "--min-n-weights", type=int, default=defaults.min_n_weights,
                       metavar="N", help="global mode: tensors with fewer values stay as they are "
                       "(default %(default)s)")
    group.add_argument("--whitelisted", type=_comma_list, action="append", default=[],
                       metavar="A,B", help="comma-separated weight names never clustered (repeatable)")
    group.add_argument("--device", choices=DEVICES, default=defaults.device,
                       help="auto: GPU when CuPy sees one, else CPU; results are identical "
                       "(default %(default)s)")
    group.add_argument("--method", default=defaults.method,
                       help="clustering method: lloyd (Lloyd from --init), optimal (near-optimal: exact DP "
                       "over fine bins, then Lloyd; ignores --init) (default %(default)s)")
    group.add_argument("--init", default=defaults.init,
                       help="initial centroids: linear (Deep Compression), density, kmeans++ "
                       "(default %(default)s)")
    group.add_argument("--max-iter", "--max_iter", type=int, default=defaults.max_iter,
                       metavar="N", help="most Lloyd iterations per tensor (default %(default)s)")
    group.add_argument("--seed", type=int, default=defaults.seed,
                       help="seed of the random initializers (default %(default)s)")


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
    )


def add_subparser(subparsers) -> None:
    """Add the `compress` subcommand."""
    parser = new_parser(
        subparsers, "compress", help="cluster the weights of a frozen GraphDef",
        description="Cluster every floating Const tensor of a frozen GraphDef with 1-D k-means "
        "and write a GraphDef used exactly like the input.",
        epilog=COMPRESS_EXAMPLES,
    )
    parser.add_argument("model", help="frozen GraphDef (.pb)")
    parser.add_argument("-o", "--output", help="output path (default MODEL.min, e.g. model.pb.min)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--zip-sizes", action="store_true",
                        help="also print the zipped sizes of input and output")
    add_clustering_arguments(parser)
    parser.set_defaults(handler=run_compress)


def run_compress(arguments) -> int:
    from ..api import compress_file

    options = options_from_arguments(arguments)
    summary = compress_file(arguments.model, arguments.output, options,
                            overwrite=arguments.overwrite, zip_sizes=arguments.zip_sizes)
    clustered = summary.run.clustered()
    weights = sum(t.size for t in clustered)
    seconds = summary.seconds
    if arguments.quiet:
        return EXIT_OK
    print(f"wrote {summary.output_path}")
    print(f"clustered {len(clustered)} of {len(summary.run.tensors)} constant tensors, "
          f"{weights:,} weights, k={options.n_clusters}"
          f"{' (global codebook)' if options.global_clusters else ''}, on {summary.device}")
    print(f"time {seconds['total']:.2f} s (parse {seconds['parse']:.2f}, select {seconds['select']:.2f}, "
          f"cluster {seconds['cluster']:.2f}, write {seconds['write']:.2f})")
    print(f"size {summary.input_bytes:,} -> {summary.output_bytes:,} bytes")
    if summary.zip_bytes:
        print(f"zipped {summary.zip_bytes['input']:,} -> {summary.zip_bytes['output']:,} bytes "
              f"({summary.zip_bytes['input'] / max(summary.zip_bytes['output'], 1):.2f}x smaller)")
    return EXIT_OK
