"""The command line: parse arguments into CompressOptions, call the API, print, map errors to exit codes."""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys

# The CLI does no BLAS work (a few 1-D dot products at most), but OpenBLAS starts
# a thread per core when NumPy loads, and each spins before it sleeps: on two
# busy cores that took CPU from the run itself. Only when NumPy is not loaded
# yet (a fresh `gpucompress` process) and the user has not chosen.
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from . import __version__
from .errors import GpucompressError
from .commands import COMMANDS, EXIT_ERROR, EXIT_INTERRUPTED

log = logging.getLogger("gpucompress")


def create_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `gpucompress` command."""
    parser = argparse.ArgumentParser(
        prog="gpucompress",
        description="GPU-accelerated weight clustering (Deep Compression) for TensorFlow models: frozen "
        "GraphDefs (.pb), SavedModel folders, Keras .keras and HDF5 (.h5, .weights.h5) files, and TFLite "
        "(.tflite) flatbuffers.",
    )
    parser.add_argument("--version", action="version", version=f"gpucompress {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for command in COMMANDS:
        command.add_subparser(subparsers)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


class _FirstOfEachWarning(logging.Filter):
    """Lets each distinct gpucompress warning through once per command.

    Why: a budget clusters the model once per k it measures, and each run
    would repeat the same warning about the options (ten identical lines).
    """

    def __init__(self):
        super().__init__()
        # The record each message first came in: every handler gets that one.
        self.first: dict[tuple[str, str], logging.LogRecord] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not record.name.startswith("gpucompress"):
            return True
        return self.first.setdefault((record.name, record.getMessage()), record) is record


@contextlib.contextmanager
def _warnings_once():
    # On the handlers: a logger's own filters do not see its children's records.
    once, handlers = _FirstOfEachWarning(), list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(once)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(once)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with argv (default sys.argv[1:]); returns the exit code."""
    parser = create_parser()
    arguments = parser.parse_args(argv)
    _configure_logging(arguments.verbose, arguments.quiet)
    from .files import OS_REASONS, overwriting
    from .limits import max_memory

    try:
        with max_memory(arguments.max_memory), overwriting(getattr(arguments, "overwrite", False)), _warnings_once():
            code = arguments.handler(arguments)
        sys.stdout.flush()  # a full disk or a closed pipe on stdout shows here, not at exit
        return code
    except BrokenPipeError as error:
        if error.filename is None:  # stdout closed (`gpucompress inspect m.pb | head`): stop quietly
            _silence_stdout()
            return EXIT_ERROR
        print(f"gpucompress: error: cannot write {error.filename}: broken pipe", file=sys.stderr)
        return EXIT_ERROR
    except GpucompressError as error:
        print(f"gpucompress: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("gpucompress: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("gpucompress: error: out of memory", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        if error.errno not in OS_REASONS or arguments.verbose >= 2:
            raise
        where = error.filename if error.filename is not None else "standard output"
        written = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EPIPE)
        verb = "write" if error.errno in written else "access"
        print(f"gpucompress: error: cannot {verb} {where}: {OS_REASONS[error.errno]}", file=sys.stderr)
        if error.filename is None:
            _silence_stdout()
        return EXIT_ERROR
    except Exception as error:  # a bug: one line, the traceback only with -vv
        if arguments.verbose >= 2:
            raise
        print(f"gpucompress: internal error: {type(error).__name__}: {error} (rerun with -vv for details)",
              file=sys.stderr)
        return EXIT_ERROR


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
