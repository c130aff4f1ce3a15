"""Hostile inputs (issue 14): each a real crafted file run through the CLI in a subprocess.

The contract for all of them: one line on stderr, exit 1, nothing created or
modified anywhere (inside or outside the output), the input untouched, and
peak memory (VmHWM, under RLIMIT_AS) within a ceiling far below what the
crafted sizes declare. Plus a bounded fuzz of the archive and model readers.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import untrusted_files as craft  # noqa: E402

from gpucompress import files, limits  # noqa: E402
from gpucompress.errors import GpucompressError, OutputError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Address-space cap of every CLI run (the fixed code needs well under 1 GiB; the unfixed one
# went to 4-21 GiB on these files) and the peak RSS each refusal must stay under.
AS_LIMIT = 4 << 30
RSS_CEILING = 320 << 20


def snapshot(paths):
    """Return {path: (mode, size, mtime, bytes)} of every file and link under `paths` (folders by mode)."""
    found = {}
    for top in paths:
        for item in [top, *sorted(top.rglob("*"))]:
            info = item.lstat()
            if item.is_symlink() or not item.is_file():
                found[str(item)] = (info.st_mode, 0, 0, b"")
            else:
                found[str(item)] = (info.st_mode, info.st_size, info.st_mtime_ns, item.read_bytes())
    return found


@pytest.fixture
def scene(tmp_path):
    """(case folder, outside folder holding a victim file)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.bin").write_bytes(b"must never change\n")
    case = tmp_path / "case"
    case.mkdir()
    return case, outside


def refused(arguments, case: Path, outside: Path, *, words: str, output: Path | None = None):
    """Run the CLI; check exit 1, one stderr line holding `words`, peak RSS under the ceiling,
    nothing changed in `case` or `outside`, and no output."""
    before = snapshot([case, outside])
    code, first, peak, lines = run(arguments, case)
    assert code == 1, (code, lines)
    assert len(lines) == 1 and lines[0].startswith("gpucompress: error: "), lines
    assert words in lines[0], lines[0]
    assert "internal error" not in lines[0]
    assert peak < RSS_CEILING, f"peak RSS {peak / 2**20:.0f} MiB"
    assert snapshot([case, outside]) == before
    if output is not None:
        assert not os.path.lexists(output)
    return lines[0]


def run(arguments, case, stdout=None):
    """Run the CLI of this checkout; returns (exit code, first stderr line, peak RSS, stderr lines)."""
    code, lines, peak = craft.run_cli_lines([str(a) for a in arguments], ROOT, AS_LIMIT, case, stdout)
    return code, (lines or [""])[0], peak, lines


# --- HDF5: nothing outside the file is read or written --------------------------------------------------

def test_h5_archive_with_external_storage_writes_nothing_outside(scene):
    case, outside = scene
    archive = craft.h5_archive_external_storage(case, outside / "victim.bin")
    refused(["unpack", archive, "-o", case / "out.h5"], case, outside, words="external file",
            output=case / "out.h5")


def test_keras_archive_with_external_storage_writes_nothing_outside(scene):
    case, outside = scene
    archive = craft.keras_archive_external_storage(case, outside / "victim.bin")
    refused(["unpack", archive, "-o", case / "out.keras"], case, outside, words="external file",
            output=case / "out.keras")


@pytest.mark.parametrize("command", ["compress", "pack"])
def test_h5_model_with_external_storage_is_refused_before_reading(scene, command):
    case, outside = scene
    model = craft.h5_model_external_storage(case, outside / "data.bin")
    refused([command, model, "-o", case / "out", "--all-variables"], case, outside,
            words="dataset /model_weights/dense/dense/kernel keeps its data in the external file", output=case / "out")


@pytest.mark.parametrize("kind, words", [("link", "is an external link"), ("virtual", "is a virtual dataset"),
                                         ("userblock", "user block of 512 bytes")])
def test_h5_model_reaching_other_files_is_refused(scene, kind, words):
    case, outside = scene
    model = {"link": lambda: craft.h5_model_external_link(case, outside / "other.h5"),
             "virtual": lambda: craft.h5_model_virtual(case, outside / "other.h5"),
             "userblock": lambda: craft.h5_model_userblock(case)}[kind]()
    refused(["compress", model, "-o", case / "o.h5"], case, outside, words=words, output=case / "o.h5")


# --- memory: tiny inputs never allocate what they declare ------------------------------------------------

@pytest.mark.parametrize("make", [craft.archive_float32_one_codebook, craft.archive_float16_zstd,
                                  craft.archive_zstd_bomb], ids=["float32-k1", "float16-zstd", "zstd-frame"])
def test_small_archive_declaring_gigabytes_is_refused_within_budget(scene, make):
    case, outside = scene
    archive = make(case)
    assert archive.stat().st_size < 200_000
    refused(["unpack", archive, "-o", case / "o.pb"], case, outside, words="over the memory budget",
            output=case / "o.pb")


def test_max_memory_raises_the_budget_and_is_checked_before_allocating(scene):
    case, outside = scene
    archive = craft.archive_float32_one_codebook(case, n=1 << 24)  # 80 MiB to decode: over the 64 MiB floor
    refused(["unpack", archive, "-o", case / "o.pb"], case, outside, words="over the memory budget")
    code, _, _, lines = run(["unpack", archive, "-o", case / "o.pb", "--max-memory", "256M", "-q"], case)
    assert code == 0 and not lines
    assert (case / "o.pb").is_file()


@pytest.mark.parametrize("command", ["compress", "pack"])
def test_one_value_fill_stays_a_fill(scene, command):
    case, outside = scene
    model = craft.pb_fill(case)
    before = snapshot([outside])
    output = case / f"o-{command}"
    code, _, peak, lines = run([command, model, "-o", output, "-q"], case)
    assert code == 0, lines
    assert peak < RSS_CEILING
    assert output.stat().st_size < 1000  # the 2^30 floats were never expanded
    assert snapshot([outside]) == before
    if command == "pack":
        code, _, peak, lines = run(["unpack", output, "-o", case / "back.pb", "-q"], case)
        from gpucompress.models.graphdef import GraphDefModel

        # what compress writes: the same GraphDef, serialized deterministically
        assert code == 0 and (case / "back.pb").read_bytes() == GraphDefModel.from_bytes(model.read_bytes()).to_bytes()


@pytest.mark.parametrize("command", ["compress", "pack"])
def test_keras_zip_bomb_is_refused_before_inflating(scene, command):
    case, outside = scene
    bomb = craft.keras_zip_bomb(case, size=1 << 28)
    assert bomb.stat().st_size < 1 << 20
    refused([command, bomb, "-o", case / "o.keras"], case, outside, words="over the memory budget")


# --- filesystem containment ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    pytest.importorskip("tensorflow")
    return craft.tiny_saved_model(tmp_path_factory.mktemp("saved"))


@pytest.mark.parametrize("kind, words", [("symlink", "is a symbolic link"), ("loop", "is a symbolic link"),
                                         ("hardlink", "has 2 hard links"), ("fifo", "is a FIFO"),
                                         ("device", "is a device")])
def test_savedmodel_with_links_or_special_files_is_refused(saved, scene, kind, words):
    case, outside = scene
    secret = outside / "secret"
    secret.write_text("private key\n")
    try:
        model = craft.saved_model_with(saved, case, kind, secret)
    except PermissionError:
        pytest.skip(f"cannot create a {kind} here")
    line = refused(["compress", model, "-o", case / "o"], case, outside, words=words, output=case / "o")
    assert f"{kind}/assets/x" in line


def test_unpacked_savedmodel_files_get_fixed_modes(saved, tmp_path):
    from gpucompress import pack_file
    from gpucompress.options import CompressOptions
    from gpucompress.packing import unpack_file

    pack_file(saved, tmp_path / "good.gpcz", CompressOptions(n_clusters=16), zip_sizes=False)
    hostile = craft.savedmodel_archive_exec_bits(tmp_path / "good.gpcz", tmp_path)
    output, _ = unpack_file(hostile, tmp_path / "out")
    modes = {path.stat().st_mode & 0o7777 for path in output.rglob("*") if path.is_file()}
    folders = {path.stat().st_mode & 0o7777 for path in [output, *output.rglob("*")] if path.is_dir()}
    assert modes == {0o644} and folders == {0o755}


def test_zip_entry_names_with_dotdot_are_refused(scene):
    case, outside = scene
    model = craft.keras_dotdot_entry(case)
    refused(["compress", model, "-o", case / "o.keras"], case, outside, words="unsafe zip entry name '../escaped.txt'",
            output=case / "o.keras")
    assert not (case.parent / "escaped.txt").exists()


@pytest.mark.parametrize("name", ["/abs.txt", "a/../../b", "..", "a\\b", "C:evil"])
def test_zip_entry_name_rule(name):
    from gpucompress.models.keras import check_entry_name

    with pytest.raises(GpucompressError, match="unsafe zip entry name"):
        check_entry_name(name, "m.keras")
    check_entry_name("assets/a..b/file.txt", "m.keras")


# --- plain errors for the OS ------------------------------------------------------------------------------

def test_full_disk_on_stdout_is_one_line(tmp_path):
    model = craft.small_pb(tmp_path)
    with open("/dev/full", "wb") as full:
        code, _, _, lines = run(["inspect", model, "--json"], tmp_path, stdout=full)
    assert code == 1 and lines == ["gpucompress: error: cannot write standard output: no space left on device"]


def test_closed_stdout_exits_quietly(tmp_path):
    model = craft.small_pb(tmp_path)
    reader, writer = os.pipe()
    os.close(reader)
    try:
        code, _, _, lines = run(["inspect", model], tmp_path, stdout=writer)
    finally:
        os.close(writer)
    assert code == 1 and lines == []


def test_forbidden_output_folder_fails_before_clustering(tmp_path):
    model = craft.small_pb(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    if os.geteuid() == 0:  # root ignores mode bits; sysfs refuses to create files even for root
        locked = Path("/sys")
    code, _, _, lines = run(["compress", model, "-o", locked / "o.pb", "-v"], tmp_path)
    assert code == 1 and lines[-1] == f"gpucompress: error: cannot write {locked / 'o.pb'}: permission denied"
    assert not any("engine batches" in line for line in lines)  # nothing was clustered


def test_write_failing_midway_is_one_line_and_leaves_nothing(tmp_path):
    """A write that fails half-way (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) is one line
    and leaves neither the output nor a temporary file."""
    model = craft.small_pb(tmp_path)
    code, lines, _ = craft.run_cli_lines(["compress", str(model), "-o", str(tmp_path / "o.pb")], ROOT, AS_LIMIT,
                                         tmp_path, file_size_limit=1000)
    assert code == 1 and lines == [f"gpucompress: error: cannot write {tmp_path / 'o.pb'}: file too large"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.pb"]


@pytest.mark.parametrize("number, reason", [(errno.ENOSPC, "no space left on device"),
                                            (errno.EROFS, "read-only file system"),
                                            (errno.EACCES, "permission denied"),
                                            (errno.EPERM, "operation not permitted")])
def test_os_errors_read_as_one_line(number, reason):
    error = OSError(number, os.strerror(number), "x")
    assert files.os_error_message(error, "out.pb") == f"cannot write out.pb: {reason}"


# --- races and litter ------------------------------------------------------------------------------------

def test_existing_output_is_never_replaced_without_overwrite(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"written by the other run")
    with pytest.raises(OutputError, match="already exists"):
        files.write_atomic(target, b"mine", overwrite=False)
    assert target.read_bytes() == b"written by the other run"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary left
    files.write_atomic(target, b"mine", overwrite=True)
    assert target.read_bytes() == b"mine"


def test_two_concurrent_runs_one_wins(tmp_path):
    model = craft.small_pb(tmp_path)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen([sys.executable, "-m", "gpucompress", "compress", str(model), "-o",
                              str(tmp_path / "o.pb"), "-q", "--n_clusters", str(k)], env=environment,
                             stderr=subprocess.PIPE, text=True) for k in (4, 8)]
    results = [(process.wait(timeout=120), process.stderr.read()) for process in runs]
    assert sorted(code for code, _ in results) == [0, 1], results
    assert "already exists" in [text for code, text in results if code][0]


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path):
    model = craft.small_pb(tmp_path)
    old = time.time() - 3600
    dead = tmp_path / ".gpucompress-tmp.999999999.o.pb.abc.tmp"
    live = tmp_path / f".gpucompress-tmp.{os.getpid()}.o.pb.def.tmp"
    new = tmp_path / ".gpucompress-tmp.999999998.o.pb.ghi.tmp"
    folder = tmp_path / ".gpucompress-tmp.999999997.saved.jkl.tmp"
    folder.mkdir()
    (folder / "inner").write_bytes(b"x")
    for path in (dead, live, new):
        path.write_bytes(b"left behind")
    for path in (dead, live, folder):
        os.utime(path, (old, old))
    os.utime(new, (time.time() + 600, time.time() + 600))  # modified after the run below starts
    code, _, _, lines = run(["compress", model, "-o", tmp_path / "o.pb", "-q"], tmp_path)
    assert code == 0, lines
    assert not dead.exists() and not folder.exists()
    assert live.exists()  # its pid is alive (this test)
    assert new.exists()  # newer than the run: may belong to a run still writing


# --- the budget rule ---------------------------------------------------------------------------------------

def test_budget_rule_and_override():
    assert limits.budget(10) == limits.FLOOR
    assert limits.budget(10 << 20) == 640 << 20
    assert limits.budget(1 << 40) == limits.FIXED_CAP
    with limits.max_memory(123):
        assert limits.budget(1 << 40) == 123
    assert limits.parse_size("8G") == 8 << 30 and limits.parse_size("1.5GiB") == 3 << 29
    with pytest.raises(ValueError):
        limits.parse_size("lots")


# --- bounded fuzz of the readers ---------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _mutations():
    return st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), min_size=1, max_size=6)


def _mutate(data: bytes, edits) -> bytes:
    data = bytearray(data)
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data)


@pytest.fixture(scope="module")
def valid_inputs(tmp_path_factory):
    """Valid small inputs of every reader: a GraphDef archive, an h5 archive, a .pb, a .keras zip, an .h5."""
    from gpucompress import pack_file
    from gpucompress.codec import archive as archives
    from gpucompress.options import CompressOptions

    folder = tmp_path_factory.mktemp("fuzz")
    pb = craft.small_pb(folder)
    pack_file(pb, folder / "m.gpcz", CompressOptions(n_clusters=16), zip_sizes=False)
    weights = craft.small_weights_h5()
    tensor = archives.CodedTensor("layers/dense/vars/0", "float32", (32, 32), numpy.array([0.5, 1.0], "<f4"),
                                  (numpy.arange(1024) % 2).astype(numpy.uint8))
    h5_archive = archives.write_archive(archives.Archive("h5", weights, [tensor], {}))
    keras = craft.keras_zip({"config.json": b"{}", "model.weights.h5": weights})
    return {"archive": (folder / "m.gpcz").read_bytes(), "h5 archive": h5_archive, "pb": pb.read_bytes(),
            "keras": keras, "h5": weights}


def _rechecksummed(data: bytes, edits, part: int) -> bytes:
    """Return an archive with `edits` applied to its manifest JSON (part 0) or to one section
    (part >= 1), every length and CRC made right again: the mutation reaches the decoders."""
    import json
    import struct
    import zlib

    from gpucompress.codec import archive as archives
    from gpucompress.codec import entropy

    fields = archives.HEADER.unpack_from(data)
    stored_bytes, raw_bytes = fields[4], fields[5]
    offset = archives.HEADER.size + stored_bytes
    raw = entropy.zstd_decompress(data[archives.HEADER.size:offset], raw_bytes)
    manifest = json.loads(raw)
    sections = []
    for length, _ in manifest["sections"]:
        sections.append(data[offset:offset + length])
        offset += length
    target = part % (len(sections) + 1)
    if target:
        if sections[target - 1]:
            sections[target - 1] = _mutate(sections[target - 1], edits)
        manifest["sections"] = [[len(x), zlib.crc32(x)] for x in sections]
        raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    else:
        raw = _mutate(raw, edits)
    stored = entropy.zstd_compress(raw, 3)
    header = archives.HEADER.pack(*fields[:4], len(stored), len(raw), zlib.crc32(stored), 0)
    header = header[:-4] + struct.pack("<I", zlib.crc32(header[:-4]))
    return b"".join([header, stored, *sections])


@FUZZ
@given(edits=_mutations(), which=st.sampled_from(["archive", "h5 archive"]), part=st.integers(-1, 20))
def test_fuzz_archive_reader_gives_only_clean_errors(valid_inputs, edits, which, part):
    """Raw flips (part -1: the CRCs catch them) and flips behind valid CRCs (the decoders must)."""
    from gpucompress.packing import decode_archive

    data = valid_inputs[which]
    data = _mutate(data, edits) if part < 0 else _rechecksummed(data, edits, part)
    try:
        decode_archive(data).to_bytes()
    except GpucompressError:
        pass


@FUZZ
@given(edits=_mutations(), which=st.sampled_from(["pb", "keras", "h5"]))
# Regression: a zeroed byte in the HDF5 superblock made h5py raise OverflowError
# while walking the file (an internal error, not a clean one).
@example(edits=[(152, 0)], which="h5")
def test_fuzz_model_readers_give_only_clean_errors(valid_inputs, edits, which):
    from gpucompress.models.graphdef import GraphDefModel
    from gpucompress.models.keras import HDF5Model, KerasModel

    reader = {"pb": GraphDefModel.from_bytes, "keras": KerasModel, "h5": HDF5Model}[which]
    try:
        model = reader(_mutate(valid_inputs[which], edits))
        for weight in model.weights():
            if weight.floating:
                values = weight.load()
                model.replace_values({weight.name: numpy.zeros_like(values)})
        model.to_bytes()
    except GpucompressError:
        pass
