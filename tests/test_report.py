"""`compress --report`: the JSON matches its documented schema and its numbers are right."""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy
import pytest

from .frozen_digits import write_frozen_digits
from gpucompress.cli import main
from gpucompress.clustering import ClusteringRun, TensorOutcome
from gpucompress.models import read_model
from gpucompress.progress import progress_wanted
from gpucompress.report import BatchTimer, load_schema

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
          "integer": int, "number": (int, float)}


def _check(value, schema, root, where="report"):
    """A small JSON Schema checker (the keywords report.schema.json uses), for when jsonschema is absent."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    if "oneOf" in schema:
        matches = 0
        for option in schema["oneOf"]:
            try:
                _check(value, option, root, where)
                matches += 1
            except AssertionError:
                pass
        assert matches == 1, f"{where}: matches {matches} of oneOf"
        return
    if "const" in schema:
        assert value == schema["const"], where
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(isinstance(value, _TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                   for t in types), f"{where}: {value!r} is not {types}"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and "minimum" in schema:
        assert value >= schema["minimum"], where
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key}"
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], root, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                raise AssertionError(f"{where}: unexpected {key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                _check(item, schema["additionalProperties"], root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _check(item, schema["items"], root, f"{where}[{index}]")


def validate(report: dict) -> None:
    """Check a report against report.schema.json: with jsonschema when installed, and by hand."""
    schema = load_schema()
    _check(report, schema, schema)
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.validate(report, schema)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """(original, compressed, report dict, printed summary) of `compress --report` at k=32."""
    folder = tmp_path_factory.mktemp("report")
    original = write_frozen_digits(folder / "digits.pb")
    output, report = folder / "digits.min.pb", folder / "report.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["compress", str(original), "-o", str(output), "--n_clusters", "32",
                     "--device", "cpu", "--report", str(report)])
    assert code == 0
    return original, output, json.loads(report.read_text()), stdout.getvalue()


def test_report_matches_the_schema(compressed):
    _, _, report, _ = compressed
    validate(report)
    assert report["totals"]["clustered_tensors"] == 4 and report["options"]["n_clusters"] == 32


def test_schema_check_rejects_a_broken_report(compressed):
    _, _, report, _ = compressed
    broken = json.loads(json.dumps(report))
    broken["tensors"][0]["values"] = "many"
    with pytest.raises(Exception):
        validate(broken)
    del broken["tensors"]
    with pytest.raises(Exception):
        validate(broken)


def test_report_numbers_match_the_models(compressed):
    original, output, report, _ = compressed
    before = {w.name: w for w in read_model(original).weights()}
    after = {w.name: w for w in read_model(output).weights()}
    assert [t["name"] for t in report["tensors"]] == list(before)
    total_sse = total_energy = 0.0
    for entry in report["tensors"]:
        if not entry["clustered"]:
            assert entry["k"] is None and entry["reason"] != "clustered"
            continue
        x = before[entry["name"]].load().astype(numpy.float64).reshape(-1)
        y = after[entry["name"]].load().astype(numpy.float64).reshape(-1)
        sse, energy = float(((x - y) ** 2).sum()), float((x * x).sum())
        total_sse, total_energy = total_sse + sse, total_energy + energy
        assert entry["values"] == x.size and entry["k"] == 32
        assert entry["k_used"] == numpy.unique(y).size
        assert entry["sse"] == pytest.approx(sse, rel=1e-9)
        assert entry["relative_error"] == pytest.approx(math.sqrt(sse / energy), rel=1e-9)
        assert entry["snr_db"] == pytest.approx(10 * math.log10(energy / sse), rel=1e-9)
        # optimal: the DP may land on a Lloyd fixed point, so 0 refinement steps is legitimate.
        assert isinstance(entry["iterations"], int) and entry["iterations"] >= 0 and entry["seconds"] >= 0
    totals = report["totals"]
    assert totals["relative_error"] == pytest.approx(math.sqrt(total_sse / total_energy), rel=1e-9)
    assert totals["values"] == sum(w.size for w in before.values())
    assert report["input"]["bytes"] == original.stat().st_size
    assert report["output"]["bytes"] == output.stat().st_size


def test_summary_table_is_printed(compressed):
    _, _, report, printed = compressed
    lines = printed.splitlines()
    header = next(line for line in lines if line.startswith("tensor"))
    assert header.split() == ["tensor", "shape", "values", "k", "rel.", "error", "SNR", "dB", "iters"]
    assert "1024x32" in printed and "all clustered weights: relative error" in printed
    assert "left as they are:" in printed


def test_existing_report_is_not_replaced_and_nothing_is_written(compressed, tmp_path, capsys):
    original, _, _, _ = compressed
    report, output = tmp_path / "report.json", tmp_path / "out.pb"
    report.write_text("keep")
    assert main(["compress", str(original), "-o", str(output), "--report", str(report)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert report.read_text() == "keep" and not output.exists()


def test_batch_timer_splits_each_batch_by_values():
    def outcome(name, size):
        return TensorOutcome(name=name, dtype="float32", shape=(size,), clustered=True, reason="clustered")

    run = ClusteringRun([outcome("a", 100), outcome("b", 300), outcome("c", 50)], {"cluster": 2.0})
    timer = BatchTimer()
    timer.batches = [(2, 10.0), (1, 10.5)]  # second batch: 0.5 s; so the first took 1.5 s
    seconds = timer.tensor_seconds(run)
    assert seconds == pytest.approx({"a": 0.375, "b": 1.125, "c": 0.5})


def test_no_progress_bar_when_quiet_or_not_a_terminal(capsys):
    # Under pytest, stdout is captured: not a terminal.
    assert not progress_wanted(quiet=False)
    assert not progress_wanted(quiet=True)
