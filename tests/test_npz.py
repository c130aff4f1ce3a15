"""The one .npz reader (gpucompress.npz): importances and inputs are bounded by their .npy headers, never unpickled."""
import io
import zipfile

import numpy
import pytest
from numpy.lib import format as npy_format

from gpucompress.cli import main
from gpucompress.errors import FormatError
from gpucompress.limits import MemoryBudgetError
from gpucompress.npz import declared_bytes, load_npz


def lying_npz(path, name="w1", shape=(1 << 40,)):
    """Write an .npz whose member's header declares `shape` float32 (4 TiB) over 16 bytes of data."""
    member = io.BytesIO()
    npy_format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": shape})
    member.write(bytes(16))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}.npy", member.getvalue())
    return path


def test_declared_bytes_come_from_the_headers_not_the_zip(tmp_path):
    path = lying_npz(tmp_path / "lie.npz")
    assert path.stat().st_size < 1000
    assert declared_bytes(path) == 4 << 40
    with pytest.raises(MemoryBudgetError, match="over the memory budget"):
        load_npz(path, "inputs")


def test_plain_arrays_read_back(tmp_path):
    numpy.savez(tmp_path / "ok.npz", a=numpy.arange(6).reshape(2, 3), b=numpy.ones(4, numpy.float32))
    _, arrays = load_npz(tmp_path / "ok.npz", "inputs")
    assert arrays["a"].shape == (2, 3) and arrays["b"].dtype == numpy.float32
    assert declared_bytes(tmp_path / "ok.npz") == 6 * 8 + 4 * 4


def test_object_arrays_are_refused_from_the_header(tmp_path):
    numpy.savez(tmp_path / "obj.npz", w=numpy.array([{"a": 1}], dtype=object))
    with pytest.raises(FormatError, match="pickles are not loaded"):
        load_npz(tmp_path / "obj.npz", "inputs")


def test_a_lying_importance_file_is_one_line_exit_1_and_nothing_written(small_pb, tmp_path, capsys):
    output = tmp_path / "o.pb"
    code = main(["compress", str(small_pb), "-o", str(output), "--device", "cpu",
                 "--importance", str(lying_npz(tmp_path / "lie.npz"))])
    err = capsys.readouterr().err
    assert code == 1 and "over the memory budget" in err and len(err.strip().splitlines()) == 1
    assert not output.exists()


def test_lying_inputs_are_refused_before_reading(tmp_path):
    # verify --inputs, compress --verify --inputs, --importance-from-data and the budgets' probe read inputs here.
    from gpucompress.runners import InputSpec
    from gpucompress.verify import load_inputs

    path = lying_npz(tmp_path / "lie.npz", name="x", shape=(1 << 38, 4))
    with pytest.raises(MemoryBudgetError, match="inputs"):
        load_inputs(path, [InputSpec("x", "float32", (None, 4))])
