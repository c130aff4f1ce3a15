"""`inspect`: the weight table, its JSON, and the histogram PNG (on a real frozen Keras model)."""
from __future__ import annotations

import json

import numpy
import pytest

from .frozen_digits import write_frozen_digits
from gpucompress import CompressOptions, compress_file
from gpucompress.cli import main
from gpucompress.errors import GpucompressError
from gpucompress.inspect import format_table, inspect_model
from gpucompress.models import read_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(original .pb, the same clustered with 16 centroids per tensor)."""
    folder = tmp_path_factory.mktemp("inspect")
    original = write_frozen_digits(folder / "digits.pb")
    clustered = folder / "digits16.pb"
    compress_file(original, clustered, CompressOptions(n_clusters=16, device="cpu"))
    return original, clustered


def _kernel(model, shape):
    (weight,) = [w for w in model.weights() if w.shape == shape]
    return weight


def test_inspect_lists_every_weight_with_exact_statistics(models):
    original, _ = models
    model = read_model(original)
    inspection = inspect_model(original)
    assert [t.name for t in inspection.tensors] == [w.name for w in model.weights()]
    kernel = _kernel(model, (1024, 32))
    values = kernel.load().astype(numpy.float64)
    (stats,) = [t for t in inspection.tensors if t.name == kernel.name]
    assert (stats.dtype, stats.values) == ("float32", 32768)
    assert stats.distinct == numpy.unique(values).size
    assert (stats.minimum, stats.maximum) == (values.min(), values.max())
    assert stats.std == pytest.approx(values.std(), rel=1e-12)
    assert not stats.looks_clustered and stats.centroids is None
    # The dense kernel is most of the file; weights plus the rest is the whole file.
    assert 0.9 < stats.share < 1
    assert inspection.weight_bytes + inspection.other_bytes == original.stat().st_size
    assert 0 < inspection.other_bytes < 20_000
    assert [t.distinct for t in inspection.tensors if t.dtype == "int32"] == [None] * sum(
        t.dtype == "int32" for t in inspection.tensors)


def test_clustered_model_shows_its_centroids(models):
    _, clustered = models
    inspection = inspect_model(clustered)
    assert inspection.looks_clustered
    large = [t for t in inspection.tensors if t.distinct is not None and t.values > 256]
    assert len(large) == 3
    for stats in large:
        assert stats.looks_clustered and stats.distinct <= 16
        values = _kernel(read_model(clustered), stats.shape).load().astype(numpy.float64)
        assert numpy.array_equal(stats.centroids, numpy.unique(values))
    assert "16*" in format_table(inspection)


def test_plot_is_a_png_with_one_panel_overall_and_one_per_largest_tensor(models, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.collections import LineCollection
    from matplotlib.image import imread

    from gpucompress.plot import plot_weight_histograms

    _, clustered = models
    model = read_model(clustered)
    inspection = inspect_model(clustered, model=model)
    path = tmp_path / "weights.png"
    figure = plot_weight_histograms(model, inspection, path, largest=4)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    width, height = figure.get_size_inches() * figure.dpi
    assert image.shape == (round(height), round(width), 4)
    assert image[..., :3].std() > 0.05  # not a blank canvas
    axes = figure.get_axes()
    assert len(axes) == 1 + 4
    assert all(ax.get_yscale() == "log" and ax.get_xlabel() for ax in axes)
    # Each clustered tensor's panel has one stem per centroid it uses.
    largest = sorted((t for t in inspection.tensors if t.distinct), key=lambda t: -t.values)[:4]
    for ax, stats in zip(axes[1:], largest):
        stems = [c for c in ax.collections if isinstance(c, LineCollection)]
        if stats.looks_clustered:
            assert len(stems) == 1 and len(stems[0].get_segments()) == stats.distinct
        else:
            assert stems == []


def test_cli_inspect_json_and_plot(models, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    original, _ = models
    plot = tmp_path / "original.png"
    assert main(["inspect", str(original), "--json", "--plot", str(plot)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "graphdef" and report["file_bytes"] == original.stat().st_size
    assert sum(t["values"] for t in report["tensors"]) == report["values"]
    assert plot.read_bytes()[:8] == PNG_SIGNATURE
    # An existing plot is never replaced without --overwrite.
    assert main(["inspect", str(original), "--plot", str(plot)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_cli_inspect_rejects_a_file_that_is_not_a_model(tmp_path, capsys):
    path = tmp_path / "notes.pb"
    path.write_bytes(b"\x07not a graph")
    assert main(["inspect", str(path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("gpucompress: error:") and error.count("\n") == 1


def test_plot_needs_floating_weights(tmp_path):
    pytest.importorskip("matplotlib")
    from tensorboard.compat.proto import graph_pb2

    from gpucompress.models import GraphDefModel
    from gpucompress.plot import plot_weight_histograms

    graph_def = graph_pb2.GraphDef()
    node = graph_def.node.add(name="shape", op="Const")
    node.attr["value"].tensor.dtype = 3
    node.attr["value"].tensor.int_val.append(4)
    path = tmp_path / "ints.pb"
    GraphDefModel(graph_def).save(path)
    model = read_model(path)
    with pytest.raises(GpucompressError, match="no floating weights"):
        plot_weight_histograms(model, inspect_model(path, model=model), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_legend_and_plot_title_count_the_same_clustered_tensors(models, tmp_path):
    # Regression: the legend said "at most 256 distinct" (small tensors have that too but are not
    # marked) and gave no counts; the plot's title gave its own.
    pytest.importorskip("matplotlib")
    from gpucompress.inspect import clustered_share, share_text
    from gpucompress.plot import plot_weight_histograms

    _, clustered = models
    inspection = inspect_model(clustered)
    table = format_table(inspection)
    marked = sum(1 for line in table.splitlines() if "*  " in line and not line.startswith("*"))
    count, floating, share = clustered_share(inspection)
    assert marked == count == 3
    legend = table.splitlines()[-1]
    assert legend.startswith("* more than 256 values but at most 256 distinct")
    assert f"({count} of {floating} floating tensors, {share_text(share)} of their values)" in legend
    figure = plot_weight_histograms(read_model(clustered), inspection, None)
    assert f"{share_text(share)} of values clustered, {count} clustered tensors" in figure._suptitle.get_text()


@pytest.mark.parametrize("suffix,magic", [(".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_plot_writes_the_format_its_extension_names(models, tmp_path, suffix, magic):
    pytest.importorskip("matplotlib")
    original, _ = models
    path = tmp_path / f"plot{suffix}"
    assert main(["inspect", str(original), "--plot", str(path), "-q"]) == 0
    assert path.read_bytes().startswith(magic)


def test_plot_refuses_an_unknown_extension(models, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    original, _ = models
    assert main(["inspect", str(original), "--plot", str(tmp_path / "plot.xyz")]) == 1
    error = capsys.readouterr().err
    assert "plot.xyz" in error and ".png" in error and ".pdf" in error
    assert not (tmp_path / "plot.xyz").exists()
