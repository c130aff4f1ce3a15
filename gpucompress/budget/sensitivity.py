"""Run a model with some weights replaced and measure its output error: what --max-output-error needs.

The probe reads the model afresh for every run, gives the named weights their
new values through the format's own replace_values, and runs it with the
runner verify uses (runners.open_runner: GraphDef, SavedModel, Keras, TFLite),
on the same inputs every time (a .npz file, or generated from the signature
as verify does). The error is verify's: the worst relative L2 error over the
outputs, against the unmodified model's outputs. Every run is counted.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy

from ..errors import GpucompressError
from ..models import read_model
from ..runners import open_runner
from ..verify import compare_outputs, generate_inputs, load_inputs


class OutputProbe:
    """Runs one model file on fixed calibration inputs; error(values) is the output error with
    some weights replaced.

    path: the model file or SavedModel folder. inputs: a .npz file or None
    (generated from the signature, seed 0, verify's 32 samples). signature,
    architecture: as verify's. Raises GpucompressError (or a subclass) naming
    why the model cannot be run: TensorFlow missing, no runner, no inputs.
    """

    def __init__(self, path: str | os.PathLike, *, inputs=None, signature=None, architecture=None):
        self.path = Path(path)
        self._signature, self._architecture = signature, architecture
        self.runs = 0
        try:
            runner = self._runner(read_model(self.path))
        except GpucompressError as error:
            raise type(error)(f"--max-output-error runs the model, and cannot: {error}") from None
        if not runner.inputs:
            raise GpucompressError(f"--max-output-error runs the model, and cannot: {self.path} has no inputs "
                                   "to feed (no Placeholder or signature input)")
        self.feeds = load_inputs(inputs, runner.inputs) if inputs is not None else generate_inputs(runner.inputs)
        self.inputs_source = str(inputs) if inputs is not None else "generated (seed 0)"
        self.reference = self._run(runner)

    def _runner(self, model):
        return open_runner(model, signature=self._signature, architecture=self._architecture)

    def _run(self, runner) -> dict[str, numpy.ndarray]:
        self.runs += 1
        return runner.run(self.feeds)

    def error(self, values: dict[str, numpy.ndarray]) -> float:
        """Return the worst relative L2 output error with the named weights set to values (NaN: inf).

        values: {weight name: array of the weight's shape and dtype}.
        """
        model = read_model(self.path)
        model.replace_values(values)
        if model.format_name == "savedmodel":  # its runner loads a folder: write the changed one
            with tempfile.TemporaryDirectory(prefix="gpucompress-probe-") as folder:
                target = Path(folder) / "model"
                model.save(target)
                outputs = self._run(self._runner(read_model(target)))
        else:
            outputs = self._run(self._runner(model))
        worst = 0.0
        for name, reference in self.reference.items():
            relative = compare_outputs(name, reference, outputs[name]).relative_error
            worst = math.inf if math.isnan(relative) else max(worst, relative)
        return worst


def probe_groups(names: list[str], max_groups: int) -> list[list[str]]:
    """Split tensor names (model order) into at most max_groups runs of consecutive names, as even as can be.

    One group per tensor when there are no more tensors than max_groups.
    """
    count = min(len(names), max_groups)
    bounds = [round(i * len(names) / count) for i in range(count + 1)] if count else [0]
    return [names[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
