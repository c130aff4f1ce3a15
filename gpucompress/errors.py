"""The exceptions gpucompress raises. Library code raises; only the CLI prints and exits."""


class GpucompressError(Exception):
    """Base class of every error gpucompress raises on purpose.

    The message is one line meant for the user; the CLI prints it as is.
    """


class InputError(GpucompressError):
    """A path or file given by the user cannot be used (missing, a directory, unreadable)."""


class FormatError(GpucompressError):
    """A file's bytes are not what its format requires (not a GraphDef, a corrupt archive)."""


class OptionsError(GpucompressError, ValueError):
    """An option has a value outside its rule (names the option, the value and the rule)."""


class DeviceError(GpucompressError):
    """The device asked for is not usable here (no CuPy, no CUDA device)."""


class OutputError(GpucompressError):
    """An output cannot be written: no space, a read-only or forbidden folder, or it appeared meanwhile."""


class KernelInputError(GpucompressError, ValueError):
    """Arrays handed to a compiled CPU kernel break its layout (offsets, rows, widths out of bounds).

    The engine's own checks come first, so through the public API this means a
    bug, reported before the unchecked loops could read outside an array.
    """
