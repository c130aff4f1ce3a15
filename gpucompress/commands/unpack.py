"""`gpucompress unpack`: restore the model stored in a `.gpcz` archive."""
from __future__ import annotations

import time

from . import EXIT_OK, new_parser

UNPACK_EXAMPLES = """\
examples:
  gpucompress unpack model.pb.gpcz              # writes model.pb.min
  gpucompress unpack model.pb.gpcz -o model_small.pb --overwrite
  gpucompress unpack model.keras.gpcz           # writes model.min.keras (model.h5.gpcz: model.min.h5)
  gpucompress unpack saved.gpcz                 # a SavedModel archive: writes the folder saved.min
"""


def add_subparser(subparsers) -> None:
    """Add the `unpack` subcommand."""
    parser = new_parser(
        subparsers, "unpack", help="restore the model stored in an archive (.gpcz)",
        description="Decode an archive written by `gpucompress pack` and write the model, byte for byte "
        "what `gpucompress compress` writes with the same options.",
        epilog=UNPACK_EXAMPLES,
    )
    parser.add_argument("archive", help="archive written by `gpucompress pack` (.gpcz)")
    parser.add_argument("-o", "--output", help="output path (default: the name `compress` gives the model, "
                        "e.g. model.pb.min, model.min.keras, saved.min); a .keras archive needs a .keras name, "
                        "an .h5 one an .h5 name")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(handler=run_unpack)


def run_unpack(arguments) -> int:
    from ..packing import unpack_file

    started = time.perf_counter()
    output, written = unpack_file(arguments.archive, arguments.output, overwrite=arguments.overwrite)
    if not arguments.quiet:
        print(f"wrote {output} ({written:,} bytes) in {time.perf_counter() - started:.2f} s")
    return EXIT_OK
