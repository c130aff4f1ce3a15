"""The CLI's subcommands, one module each with `add_subparser(subparsers)`.

Each module creates its parser with `new_parser` (which adds the common -v/-q
flags) and sets `handler`, a function(arguments) -> exit code. Adding a
command is a new module here and one entry in COMMANDS.
"""
import argparse

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def common_parser() -> argparse.ArgumentParser:
    """Return a parent parser holding the flags every subcommand accepts."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log lines on stderr (-vv: debug, and tracebacks)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only errors (no summary, no progress)")
    parser.add_argument("--max-memory", "--max_memory", type=_size, default=None, metavar="SIZE",
                        help="memory budget for what one input may make us allocate (e.g. 8G; default "
                        "min(16G, max(64M, 64 x the input's size)), see FORMAT.md)")
    return parser


def _size(text: str) -> int:
    from ..limits import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def new_parser(subparsers, name: str, **kwargs) -> argparse.ArgumentParser:
    """Add and return a subcommand parser with the common flags and raw-text help."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    return subparsers.add_parser(name, parents=[common_parser()], **kwargs)


from . import compress  # noqa: E402  (modules import the names above)
from . import inspect, pack, unpack, verify  # noqa: E402

COMMANDS = (compress, pack, unpack, inspect, verify)
