"""Run the CLI on every hostile input of tests/untrusted_files.py and print what happened.

    python benchmarks/untrusted.py                       # this checkout
    python benchmarks/untrusted.py --checkout /tmp/main   # another checkout of gpucompress (e.g. before a fix)
    python benchmarks/untrusted.py --only bomb --as-limit 6G

For each case: the command, its exit code, the first line of stderr, the peak
RSS of the CLI process (ru_maxrss from wait4, i.e. its VmHWM), and whether
anything outside the output changed (every file of the case folder and the
"outside" files, by content and mtime). `--as-limit` caps the address space
of the CLI (RLIMIT_AS) of the cases that do not load TensorFlow, so a
checkout that would allocate tens of GiB fails at the cap instead of taking
the machine down; a case that hits it shows the cap as its peak.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import untrusted_files as craft  # noqa: E402
from untrusted_files import run_cli  # noqa: E402

from gpucompress.limits import parse_size  # noqa: E402


def snapshot(paths: list[Path]) -> dict[str, tuple]:
    """Return {path: (kind, size, mtime_ns, sha256)} of every entry under `paths` (links not followed)."""
    found = {}
    for top in paths:
        items = [top] + (sorted(top.rglob("*")) if top.is_dir() and not top.is_symlink() else [])
        for item in items:
            if not os.path.lexists(item):
                continue
            info = item.lstat()
            digest = ""
            if item.is_file() and not item.is_symlink() and info.st_nlink >= 1:
                digest = hashlib.sha256(item.read_bytes()).hexdigest()
            if item.is_dir() and not item.is_symlink():  # a folder's mtime moves with any probe file
                found[str(item)] = (oct(info.st_mode), 0, 0, "")
            else:
                found[str(item)] = (oct(info.st_mode), info.st_size, info.st_mtime_ns, digest)
    return found


def cases(folder: Path, outside: Path, saved: Path | None, checkout: Path):
    """Yield (name, arguments, output path or None, uses TensorFlow, extra paths watched, options)."""
    def sub(name):
        path = folder / name
        path.mkdir()
        return path

    target = outside / "victim.bin"
    target.write_bytes(b"outside file: must never change\n" * 4)
    here = sub("h5arch")
    yield ("h5 archive, external storage (unpack)",
           ["unpack", str(craft.h5_archive_external_storage(here, target)), "-o", str(here / "out.h5")],
           here / "out.h5", False, {})
    here = sub("kerasarch")
    yield ("keras archive, external storage (unpack)",
           ["unpack", str(craft.keras_archive_external_storage(here, target)), "-o", str(here / "out.keras")],
           here / "out.keras", False, {})
    here = sub("h5ext")
    data_file = outside / "h5-data.bin"
    for command in ("compress", "pack"):
        output = here / f"out-{command}"
        yield (f".h5 model, external storage ({command})",
               [command, str(craft.h5_model_external_storage(here, data_file)), "-o", str(output), "--n_clusters=16",
                "--all-variables"], output, False, {})
    here = sub("h5link")
    yield (".h5 model, external link (compress)",
           ["compress", str(craft.h5_model_external_link(here, outside / "linked.h5")), "-o", str(here / "o.h5")],
           here / "o.h5", False, {})
    here = sub("h5virtual")
    yield (".h5 model, virtual dataset (compress)",
           ["compress", str(craft.h5_model_virtual(here, outside / "mapped.h5")), "-o", str(here / "o.h5")],
           here / "o.h5", False, {})
    here = sub("h5userblock")
    yield (".h5 model, user block (compress)",
           ["compress", str(craft.h5_model_userblock(here)), "-o", str(here / "o.h5")], here / "o.h5", False, {})
    here = sub("huge32")
    yield ("archive float32 2^30 values, 1-entry codebook (unpack)",
           ["unpack", str(craft.archive_float32_one_codebook(here)), "-o", str(here / "o.pb")], here / "o.pb",
           False, {})
    here = sub("huge16")
    yield ("archive float16 2^31 values, zstd indices (unpack)",
           ["unpack", str(craft.archive_float16_zstd(here)), "-o", str(here / "o.pb")], here / "o.pb", False, {})
    here = sub("zbomb")
    yield ("archive, zstd frame declaring 4 GiB (unpack)",
           ["unpack", str(craft.archive_zstd_bomb(here)), "-o", str(here / "o.pb")], here / "o.pb", False, {})
    here = sub("fill")
    fill = craft.pb_fill(here)
    for command in ("compress", "pack"):
        yield (f".pb 1-value fill of 2^30 (compress/pack: {command})",
               [command, str(fill), "-o", str(here / f"o-{command}"), "--no-zip-sizes"] if command == "pack"
               else [command, str(fill), "-o", str(here / f"o-{command}")], here / f"o-{command}", False, {})
    here = sub("zipbomb")
    bomb = craft.keras_zip_bomb(here)
    for command in ("compress", "pack"):
        output = here / ("o.keras" if command == "compress" else "o.gpcz")
        yield (f".keras zip bomb, 2 GiB entry ({command})", [command, str(bomb), "-o", str(output)], output,
               False, {})
    here = sub("dotdot")
    yield (".keras with a ../ entry (compress)",
           ["compress", str(craft.keras_dotdot_entry(here)), "-o", str(here / "o.keras")], here / "o.keras",
           False, {"zip name": "../escaped.txt"})
    if saved is not None:
        for kind in ("symlink", "loop", "hardlink", "fifo", "device"):
            here = sub(f"sm-{kind}")
            secret = outside / f"secret-{kind}.txt"
            secret.write_text("private key material\n")
            try:
                model = craft.saved_model_with(saved, here, kind, secret)
            except (PermissionError, OSError) as error:
                print(f"  (skipped SavedModel {kind}: {error})", file=sys.stderr)
                continue
            yield (f"SavedModel with a {kind} (compress)", ["compress", str(model), "-o", str(here / "o")],
                   here / "o", True, {"leak": b"private key material"})
        here = sub("sm-exec")
        packed = here / "good.gpcz"
        done = run_cli(["pack", str(saved), "-o", str(packed), "--n_clusters=16", "-q"], ROOT, None, here)
        if done[0] == 0:
            exec_archive = craft.savedmodel_archive_exec_bits(packed, here)
            packed.unlink()
            yield ("SavedModel archive with 0755 files (unpack)", ["unpack", str(exec_archive), "-o",
                                                                    str(here / "o")], here / "o", True,
                   {"modes": here / "o"})
    here = sub("enospc")
    model = craft.small_pb(here)
    yield ("stdout on a full disk (inspect --json > /dev/full)", ["inspect", str(model), "--json"], None, False,
           {"stdout": "/dev/full"})
    yield ("closed stdout (inspect | head -c0)", ["inspect", str(model)], None, False, {"stdout": "pipe"})
    here = sub("readonly")
    model = craft.small_pb(here)
    locked = here / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    if os.geteuid() == 0:  # root writes anywhere it has mode bits for; /sys refuses even root (EACCES)
        locked = Path("/sys")
    yield ("forbidden output folder (compress)", ["compress", str(model), "-o", str(locked / "o.pb")],
           locked / "o.pb", False, {})
    here = sub("efbig")
    model = craft.small_pb(here)
    yield ("write failing midway (RLIMIT_FSIZE 1000 bytes: EFBIG, as ENOSPC)",
           ["compress", str(model), "-o", str(here / "o.pb")], here / "o.pb", False, {"fsize": 1000})
    here = sub("stale")
    model = craft.small_pb(here)
    stale = here / ".gpucompress-tmp.999999999.o.pb.abc123.tmp"
    stale.write_bytes(b"left by a run killed with -9")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    yield ("stale temp file of a dead run (compress)", ["compress", str(model), "-o", str(here / "o.pb")],
           here / "o.pb", False, {"stale": stale})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", default=str(ROOT), help="the gpucompress checkout to run (PYTHONPATH)")
    parser.add_argument("--as-limit", default="6G", help="RLIMIT_AS of non-TensorFlow cases (default 6G)")
    parser.add_argument("--only", default="", help="run only cases whose name contains one of these "
                        "comma-separated strings")
    parser.add_argument("--no-savedmodel", action="store_true", help="skip the SavedModel cases (no TensorFlow)")
    arguments = parser.parse_args()
    checkout = Path(arguments.checkout).resolve()
    as_limit = parse_size(arguments.as_limit) if arguments.as_limit else None
    print(f"checkout {checkout} (commit {_commit(checkout)}), RLIMIT_AS {arguments.as_limit or 'none'} "
          f"for cases without TensorFlow, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()
    print("| case | exit | first stderr line | peak RSS | output | outside changed |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="gpucompress-untrusted-") as scratch:
        scratch = Path(scratch)
        os.chmod(scratch, 0o777)
        outside = scratch / "outside"
        outside.mkdir()
        folder = scratch / "cases"
        folder.mkdir()
        saved = None
        if not arguments.no_savedmodel:
            saved = craft.tiny_saved_model(scratch)
        for name, command, output, uses_tf, extra in cases(folder, outside, saved, checkout):
            if arguments.only and not any(part in name for part in arguments.only.split(",")):
                continue
            case_folder = Path(command[1]).parent
            before = snapshot([case_folder, outside])
            stdout = None
            reader = None
            if extra.get("stdout") == "/dev/full":
                stdout = open("/dev/full", "wb")
            elif extra.get("stdout") == "pipe":
                reader, writer = os.pipe()
                os.close(reader)
                stdout = writer
            code, first, peak = run_cli(command, checkout, None if uses_tf else as_limit, case_folder, stdout,
                                        extra.get("fsize", 0))
            if hasattr(stdout, "close"):
                stdout.close()
            elif stdout is not None:
                os.close(stdout)
            after = snapshot([case_folder, outside])
            changed = _changes(before, after, output, extra)
            made = "-" if output is None else ("written" if os.path.lexists(output) else "none")
            if "leak" in extra and output is not None and Path(output).is_dir():
                if any(p.is_file() and extra["leak"] in p.read_bytes() for p in Path(output).rglob("*")):
                    made += " (holds the outside file's bytes)"
            if "zip name" in extra and output is not None and Path(output).is_file():
                import zipfile

                if extra["zip name"] in zipfile.ZipFile(output).namelist():
                    made += f" (holds entry {extra['zip name']})"
            if "modes" in extra and os.path.lexists(output):
                modes = sorted({oct(p.stat().st_mode & 0o7777) for p in Path(output).rglob("*") if p.is_file()})
                made += f" (file modes {', '.join(modes)})"
            first = first.replace("|", "/")[:150]
            print(f"| {name} | {code} | {first} | {peak / 2**20:,.0f} MiB | {made} | {changed} |", flush=True)
        if not arguments.only or "race" in arguments.only:
            print(race(scratch, checkout))
    return 0


def race(scratch: Path, checkout: Path) -> str:
    """Two runs into one output at the same moment, without --overwrite: a table row of their exit codes."""
    folder = scratch / "race"
    folder.mkdir()
    model = craft.small_pb(folder)
    environment = {**os.environ, "PYTHONPATH": str(checkout)}
    runs = [subprocess.Popen([sys.executable, "-m", "gpucompress", "compress", str(model), "-o",
                              str(folder / "o.pb"), "-q", "--n_clusters", str(k)], env=environment,
                             stderr=subprocess.PIPE, text=True) for k in (4, 8)]
    results = sorted((process.wait(), process.stderr.read().strip().splitlines()) for process in runs)
    codes = " and ".join(str(code) for code, _ in results)
    message = next((lines[0] for code, lines in results if code and lines), "")[:150]
    return f"| two concurrent compress runs, one output (race) | {codes} | {message} | - | written | - |"


def _changes(before: dict, after: dict, output: Path | None, extra: dict) -> str:
    def inside_output(path: str) -> bool:
        return output is not None and (path == str(output) or path.startswith(str(output) + os.sep))

    changed = sorted(path for path in set(before) | set(after)
                     if before.get(path) != after.get(path) and not inside_output(path))
    if "stale" in extra:
        return "stale temp removed" if changed == [str(extra["stale"])] else ("stale temp kept" if not changed
                                                                             else "; ".join(changed)[:120])
    return "no" if not changed else "YES: " + ", ".join(Path(p).name for p in changed)[:120]


def _commit(checkout: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "?"
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
