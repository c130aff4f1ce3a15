"""Reading inputs safely and writing outputs atomically.

Outputs are written to a temporary file (or folder) next to them, named
TEMP_PREFIX + the writer's pid + the output's name, then put in place: with
os.link (or an O_EXCL placeholder) when nothing may be replaced, so of two
runs racing for one output exactly one wins and the other gets "already
exists"; with os.replace under overwrite. A run removes the temporary files
that dead runs left in its output folder (TEMP_PREFIX, its own user's, older
than the run, their pid no longer alive). OS failures become one-line
OutputErrors ("cannot write X: no space left on device").
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from .errors import InputError, OutputError

log = logging.getLogger(__name__)

TEMP_PREFIX = ".gpucompress-tmp."
# Temporary files older than this run may be stale; newer ones may be another live run's.
RUN_STARTED = time.time()
OS_REASONS = {
    errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted", errno.EPIPE: "broken pipe", errno.EFBIG: "file too large",
    errno.ENOTDIR: "not a directory", errno.EISDIR: "is a directory", errno.ENAMETOOLONG: "file name too long",
}
# A model's save(path) replaces path, as asked; compress_file, pack_file, unpack_file and the CLI
# set overwriting(overwrite) around their writes, so without overwrite nothing existing is replaced.
_overwrite: contextvars.ContextVar[bool] = contextvars.ContextVar("gpucompress_overwrite", default=True)

# The files that make a folder a SavedModel (an output folder we may replace).
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def check_input_file(path: str | os.PathLike, *, max_bytes: int | None = None) -> Path:
    """Return `path` as a Path after checking it is an existing, readable regular file.

    Raises InputError with one line naming the problem.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise InputError(f"{path}: {path.stat().st_size} bytes exceeds the limit of {max_bytes}")
    return path


def read_input_file(path: str | os.PathLike, *, max_bytes: int | None = None) -> tuple[Path, bytes]:
    """Return (path as a Path, the file's bytes) after check_input_file's checks (max_bytes too).

    Raises InputError with one line naming the problem, a failed read included.
    """
    path = check_input_file(path, max_bytes=max_bytes)
    try:
        return path, path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None


def check_output_path(output: str | os.PathLike, inputs: list[Path], *, overwrite: bool,
                      directory: bool = False) -> Path:
    """Return `output` as a Path after checking it may be written.

    Never the same file as an input; an existing file only with overwrite=True;
    its folder must exist. directory=True: the output is a folder (a
    SavedModel); an existing one is replaced only with overwrite=True and only
    when it is a SavedModel itself, and it may not lie inside an input folder
    or hold one. Raises InputError otherwise.
    """
    output = Path(output)
    for source in inputs:
        if output.exists() and source.exists() and os.path.samefile(output, source):
            raise InputError(f"{output}: refusing to overwrite the input")
        if output.resolve() == source.resolve():
            raise InputError(f"{output}: refusing to overwrite the input")
        if directory or source.is_dir():
            if source.resolve() in output.resolve().parents or output.resolve() in source.resolve().parents:
                raise InputError(f"{output}: refusing to write inside the input or around it")
    if directory:
        if output.exists() and not output.is_dir():
            raise InputError(f"{output}: is a file, expected a folder name for the SavedModel")
        if output.is_dir() and not overwrite:
            raise InputError(f"{output}: already exists (pass --overwrite to replace it)")
        if output.is_dir() and not any((output / name).is_file() for name in SAVED_MODEL_FILES):
            raise InputError(f"{output}: is a folder that is not a SavedModel, refusing to replace it")
    if output.is_dir() and not directory:
        raise InputError(f"{output}: is a directory, expected a file name")
    if output.exists() and not overwrite:
        raise InputError(f"{output}: already exists (pass --overwrite to replace it)")
    if not output.parent.exists():
        raise InputError(f"{output.parent}: output folder does not exist")
    check_writable_folder(output)
    return output


def os_error_message(error: OSError, path, verb: str = "write") -> str:
    """Return one line for an OSError met while working on `path`: "cannot write X: permission denied"."""
    reason = OS_REASONS.get(error.errno) or error.strerror or type(error).__name__
    return f"cannot {verb} {path}: {reason}"


@contextlib.contextmanager
def overwriting(allowed: bool):
    """Within the block, write_atomic and replace_directory may replace an existing output."""
    token = _overwrite.set(bool(allowed))
    try:
        yield
    finally:
        _overwrite.reset(token)


def temporary_prefix(path: Path) -> str:
    """Return the name prefix of this process's temporary files for output `path`."""
    return f"{TEMP_PREFIX}{os.getpid()}.{path.name[:96]}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Remove the temporary files and folders dead runs left in `folder`; returns their names.

    Only entries named TEMP_PREFIX + pid + ..., owned by this user, last
    modified before this run started, whose pid is not a live process. Never
    follows a link (a link is removed as a link). Errors are ignored (logged).
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        pid = entry.name[len(TEMP_PREFIX):].split(".", 1)[0]
        try:
            info = entry.stat(follow_symlinks=False)
            if (not pid.isdigit() or int(pid) == os.getpid() or info.st_uid != os.getuid()
                    or info.st_mtime >= RUN_STARTED or _pid_alive(int(pid))):
                continue
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
        except OSError as error:
            log.debug("%s: stale temporary not removed (%s)", entry.path, error)
    if removed:
        log.info("%s: removed %d stale temporary files of dead runs", folder, len(removed))
    return removed


def check_writable_folder(output: Path) -> None:
    """Raise OutputError unless a file can be created next to `output` (tried, then removed).

    Run before the work starts, so a read-only or forbidden folder fails in a
    second, not after clustering. Also removes stale temporaries there.
    """
    output = Path(output)
    folder = output.parent
    remove_stale_temporaries(folder)
    try:
        handle, probe = tempfile.mkstemp(prefix=temporary_prefix(output), suffix=".probe", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(os_error_message(error, output)) from None


def write_atomic(path: str | os.PathLike, data, *, overwrite: bool | None = None) -> None:
    """Write bytes to `path` atomically: a temporary file in the same folder, then put in place.

    data: bytes, or an iterable of bytes pieces written one after the other
    (a large output need never exist whole in memory). overwrite: whether an
    existing `path` may be replaced (None: as `overwriting` says; outside
    any `overwriting` block, yes). A crash or error, raised by the pieces too, leaves either the old
    file or the new one, never a partial file. Raises OutputError (no space,
    read-only, permission denied; `path` appeared meanwhile and may not be
    replaced).
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = [data]
    path = Path(path)
    overwrite = _overwrite.get() if overwrite is None else overwrite
    try:
        handle, temporary = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise OutputError(os_error_message(error, path)) from None
    try:
        # mkstemp creates files 0600; give the output the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(handle, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as stream:
            for piece in data:
                stream.write(piece)
            stream.flush()
            os.fsync(stream.fileno())
        _install_file(temporary, path, overwrite)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise OutputError(os_error_message(error, path)) from None
        raise


def _already_exists(path: Path) -> OutputError:
    return OutputError(f"{path}: already exists (another run created it meanwhile; "
                       "pass --overwrite to replace it)")


def _install_file(temporary: str, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)  # fails if path exists: never replaces what another run wrote
    except FileExistsError:
        raise _already_exists(path) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        try:  # a file system without hard links: an exclusive placeholder, then rename over it
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise _already_exists(path) from None
        os.replace(temporary, path)
        return
    os.unlink(temporary)


def temporary_directory(path: Path) -> Path:
    """Create and return an empty temporary folder (mode 0755) next to `path`. Raises OutputError."""
    try:
        folder = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent))
        os.chmod(folder, 0o755)
    except OSError as error:
        raise OutputError(os_error_message(error, path)) from None
    return folder


def replace_directory(temporary: Path, path: Path) -> None:
    """Put the finished folder `temporary` at `path`.

    An existing `path` is swapped out and removed only when `overwriting`
    allows it; otherwise `path` is claimed with an exclusive mkdir first (of
    two racing runs one wins) and `temporary` renamed over that empty folder.
    Raises OutputError.
    """
    try:
        if _overwrite.get() and path.is_dir():
            old = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=".old", dir=path.parent))
            os.replace(path, old / "model")
            os.replace(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
            return
        if _overwrite.get():
            os.replace(temporary, path)
            return
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            raise _already_exists(path) from None
        try:
            os.replace(temporary, path)
        except BaseException:
            os.rmdir(path)
            raise
    except OSError as error:
        raise OutputError(os_error_message(error, path)) from None


def fix_modes(folder: Path) -> None:
    """Give every file under `folder` mode 0644 and every folder 0755 (no exec bits from an input)."""
    os.chmod(folder, 0o755)
    for root, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o755, follow_symlinks=False)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644, follow_symlinks=False)


def check_tree(folder: Path, label: str | None = None) -> int:
    """Check that a model folder holds only plain files and folders; returns its files' total bytes.

    Refused, with the path named (InputError): a symbolic link (never
    followed, so nothing outside the folder is read), a file with more than
    one hard link (its content may be another file's), a device, FIFO or
    socket. Nothing is opened.
    """
    folder = Path(folder)
    label = label or str(folder)
    total = 0
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as error:
            raise InputError(os_error_message(error, current, "read")) from None
        for entry in entries:
            shown = Path(label) / Path(entry.path).relative_to(folder)
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise InputError(f"{shown}: is a symbolic link (refused: model folders may hold only "
                                 "plain files and folders)")
            if stat.S_ISDIR(info.st_mode):
                pending.append(Path(entry.path))
            elif not stat.S_ISREG(info.st_mode):
                kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                        else "a device")
                raise InputError(f"{shown}: is {kind} (refused: model folders may hold only plain files "
                                 "and folders)")
            elif info.st_nlink > 1:
                raise InputError(f"{shown}: has {info.st_nlink} hard links (refused: its content may "
                                 "belong to a file outside the model folder)")
            else:
                total += info.st_size
    return total
