"""One options object shared by the CLI and the Python API, validated in one place."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import OptionsError

DEVICES = ("auto", "cpu", "gpu")
ENGINES = ("gpucompress", "faiss")
INTEGER_OBJECTIVES = ("dequantized", "integer")
MAX_CLUSTERS = 65536
# The optimal method's dynamic program over 8k bins holds O(k^2) cells: on a
# 1 M-value tensor k=4096 peaks at 0.7 GB RSS (16 s on 2 cores), k=16384 at
# 8.6 GB (2 min, measured in issue 15). Lloyd needs O(n + k): k=65536 peaks at
# 0.18 GB. Figures: python benchmarks/large_k.py.
MAX_OPTIMAL_CLUSTERS = 4096
GRANULARITIES = ("per-tensor", "per-channel", "grouped")
# Generated input samples of `verify` and `compress --verify` (here so the CLI's parser need not import verify).
VERIFY_SAMPLES = 32


def _methods():
    from .engine import METHODS

    return METHODS


def _initializers():
    from .kernels.initializers import INITIALIZERS

    return INITIALIZERS


@dataclass(frozen=True)
class CompressOptions:
    """How to cluster a model's weights.

    n_clusters: codebook size k per tensor (or for the whole model with
        global_clusters), 2..4096 with method "optimal" (its memory grows as
        k squared), 2..65536 with "lloyd"; 256 = 8-bit indices, 16 = 4-bit.
    global_clusters: one codebook shared by all clustered tensors (the seed's
        --global_clusters).
    min_n_weights: in global mode, tensors with fewer values stay as they are
        (the seed applies it to global mode only).
    whitelisted: names of weights never clustered: a weight's own name, or
        a name it answers to (Weight.aliases: a variable's own path such as
        "sequential/dense/kernel" or "dense/kernel" in SavedModel and .h5
        files, "dense/vars/0" in .keras). A name matching no weight makes
        clustering raise OptionsError (select.check_whitelist).
    all_variables: for SavedModel and Keras models, cluster every float
        variable (biases, BatchNormalization statistics ...), not only the
        weights proper (rank >= 2: kernels, embeddings). Optimizer state is
        never clustered. No effect on frozen graphs (every floating Const).
    device: "auto" (GPU when CuPy sees one, else CPU), "cpu" or "gpu".
    method: clustering algorithm, a name in engine.METHODS: "optimal" (the
        default: exact DP over fine bins, then Lloyd; within about 1% of the
        optimal SSE) or "lloyd" (Lloyd from `init`, as Deep Compression).
    init: initial centroids of method "lloyd": "linear" (Deep Compression's
        choice), "density" (quantiles) or "kmeans++" (seeded, deterministic).
    max_iter: most Lloyd iterations per tensor.
    seed: seed of the random initializers.
    batch_values: values per device batch; None picks a default per device.
    engine: "gpucompress" (ours: exact, bit-identical on every device) or
        "faiss" (faiss.Kmeans; float32, subsampled, not bit-identical across
        devices; method and init do not apply; needs the `faiss` extra;
        per-tensor codebooks only).
    granularity: "per-tensor" (one codebook per tensor, the default),
        "per-channel" (one per output channel) or "grouped" (one per
        group_size consecutive channels, the last group smaller when
        group_size does not divide the channel count). Tensors of rank 0 or 1
        keep one codebook. Not with global_clusters.
    group_size: channels per codebook with granularity "grouped" (required
        there, refused otherwise); above a tensor's channel count is an error.
    channel_axis: the channel axis for per-channel and grouped codebooks
        (negative counts from the end); None: each tensor's output-channel
        axis by layer kind where its format tells the kind, else the last
        axis (channels.KIND_AXES, README "Per-channel codebooks").
    keep_zeros: True: exact zeros stay exactly 0 and are not clustered (the
        other values get k - 1 centroids, 0.0 is the k-th; needs
        n_clusters >= 3; a tensor without zeros keeps all k for its values);
        False: zeros are clustered like any value; None
        (auto, the default): True for each tensor more than 30% of whose
        values are exact zeros (the report says which). Not with global_clusters.
    integer_objective: what int8/int16 weights with per-channel scales (TFLite)
        minimise: "dequantized" (the default: their error once dequantized,
        each squared integer error weighing its channel's scale squared) or
        "integer" (the integers' own error, every channel alike: each channel's
        error relative to its range). Other weights are not concerned.
    """

    n_clusters: int = 256
    global_clusters: bool = False
    min_n_weights: int = 256
    whitelisted: tuple[str, ...] = field(default_factory=tuple)
    device: str = "auto"
    method: str = "optimal"
    init: str = "linear"
    max_iter: int = 300
    seed: int = 0
    batch_values: int | None = None
    all_variables: bool = False
    engine: str = "gpucompress"
    granularity: str = "per-tensor"
    group_size: int | None = None
    channel_axis: int | None = None
    keep_zeros: bool | None = None
    importance: str | os.PathLike | Mapping | None = field(default=None, compare=False)
    importance_from_data: str | os.PathLike | None = None
    integer_objective: str = "dequantized"

    def __post_init__(self):
        if isinstance(self.whitelisted, (list, set, frozenset)):
            object.__setattr__(self, "whitelisted", tuple(sorted(self.whitelisted)))
        if isinstance(self.whitelisted, str):
            raise OptionsError("whitelisted should be a tuple of names, not a string.")
        _check_int("n_clusters", self.n_clusters, 2, MAX_CLUSTERS)
        _check_int("min_n_weights", self.min_n_weights, 1, None)
        _check_int("max_iter", self.max_iter, 0, None)
        _check_int("seed", self.seed, 0, None)
        if self.batch_values is not None:
            _check_int("batch_values", self.batch_values, 1, None)
        _check_choice("device", self.device, DEVICES)
        _check_choice("engine", self.engine, ENGINES)
        _check_choice("method", self.method, tuple(sorted(_methods())))
        _check_choice("init", self.init, tuple(sorted(_initializers())))
        _check_choice("integer_objective", self.integer_objective, INTEGER_OBJECTIVES)
        self._check_granularity()
        if self.importance is not None and not isinstance(self.importance, (str, os.PathLike, Mapping)):
            raise OptionsError(f"importance={type(self.importance).__name__} should be a path to an .npz file "
                               "or a mapping of weight names to arrays.")
        if self.importance is not None and self.importance_from_data is not None:
            raise OptionsError("importance (--importance) and importance_from_data (--importance-from-data) "
                               "exclude each other: pass one.")
        if self.engine != "gpucompress" and (self.importance is not None or self.importance_from_data is not None):
            raise OptionsError(f"importance weights need engine='gpucompress'; engine={self.engine!r} "
                               "clusters unweighted.")
        if self.method == "optimal" and self.engine == "gpucompress" and self.n_clusters > MAX_OPTIMAL_CLUSTERS:
            raise OptionsError(
                f"n_clusters={self.n_clusters} should be <= {MAX_OPTIMAL_CLUSTERS} with method='optimal' "
                "(its dynamic program's memory grows as k squared: about 0.7 GB at k=4096, 8.6 GB at 16384); "
                f"method='lloyd' (--method lloyd) takes up to {MAX_CLUSTERS}.")

    def _check_granularity(self) -> None:
        _check_choice("granularity", self.granularity, GRANULARITIES)
        if self.granularity == "grouped":
            if self.group_size is None:
                raise OptionsError("granularity='grouped' needs group_size (--group-size G), the channels per codebook.")
            _check_int("group_size", self.group_size, 1, None)
        elif self.group_size is not None:
            raise OptionsError(f"group_size={self.group_size!r} applies to granularity='grouped' only "
                               f"(granularity={self.granularity!r}).")
        if self.channel_axis is not None:
            if isinstance(self.channel_axis, bool) or not isinstance(self.channel_axis, int):
                raise OptionsError(f"channel_axis={self.channel_axis!r} should be an integer.")
            if self.granularity == "per-tensor":
                raise OptionsError(f"channel_axis={self.channel_axis} applies to granularity 'per-channel' or "
                                   "'grouped' only (granularity='per-tensor').")
        if self.keep_zeros not in (None, True, False):
            raise OptionsError(f"keep_zeros={self.keep_zeros!r} should be True, False or None (auto).")
        if self.global_clusters and self.granularity != "per-tensor":
            raise OptionsError(f"granularity={self.granularity!r} does not apply to global_clusters "
                               "(one codebook shared by every tensor).")
        if self.global_clusters and self.keep_zeros:
            raise OptionsError("keep_zeros=True does not apply to global_clusters (one codebook shared by every tensor).")
        if self.keep_zeros and self.n_clusters < 3:
            raise OptionsError(f"keep_zeros=True needs n_clusters >= 3 (0.0 takes one of the "
                               f"n_clusters={self.n_clusters} centroids).")
        if self.engine == "faiss" and self.granularity != "per-tensor":
            raise OptionsError(f"granularity={self.granularity!r} needs engine='gpucompress' "
                               "(engine='faiss' makes per-tensor codebooks only).")


def _check_int(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionsError(f"{name}={value!r} should be an integer.")
    if value < low:
        raise OptionsError(f"{name}={value} should be >= {low}.")
    if high is not None and value > high:
        raise OptionsError(f"{name}={value} should be <= {high}.")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise OptionsError(f"{name}={value!r} should be one of {', '.join(allowed)}.")


@dataclass(frozen=True)
class BudgetOptions:
    """A budget that picks each tensor's codebook size (gpucompress.budget); exactly one target.

    target_bits_per_weight: archive bits per clustered weight: the whole
        `.gpcz` archive (as `pack` writes it) over the values of the tensors
        the options would cluster, in bits; > 0.
    target_size: the archive's bytes (`pack` output), > 0.
    max_output_error: the largest relative L2 error of the model's outputs
        (verify's measure, worst output) on the calibration inputs, > 0.
    inputs, signature, architecture: how the model is run for
        max_output_error (as verify's --inputs, --signature, --architecture).
    max_probe_runs: most model runs that measure sensitivity (tensors are
        probed in that many groups of consecutive tensors when they are more).
    max_tries: most plans verified by running the model (max_output_error), or
        archives encoded to check the size (target_size, target_bits_per_weight).
    n_clusters (CompressOptions) is the largest k a tensor may get.
    """

    target_bits_per_weight: float | None = None
    target_size: int | None = None
    max_output_error: float | None = None
    inputs: str | None = None
    signature: str | None = None
    architecture: str | None = None
    max_probe_runs: int = 48
    max_tries: int = 4

    def __post_init__(self):
        given = [name for name in ("target_bits_per_weight", "target_size", "max_output_error")
                 if getattr(self, name) is not None]
        if len(given) != 1:
            raise OptionsError("a budget takes exactly one of target_bits_per_weight (--target-bits-per-weight), "
                               "target_size (--target-size), max_output_error (--max-output-error); "
                               f"got {', '.join(given) or 'none'}.")
        for name in ("target_bits_per_weight", "max_output_error"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise OptionsError(f"{name}={value!r} should be a finite number.")
                if value <= 0:
                    raise OptionsError(f"{name}={value} should be > 0.")
        if self.target_size is not None:
            _check_int("target_size", self.target_size, 1, None)
        _check_int("max_probe_runs", self.max_probe_runs, 1, 4096)
        _check_int("max_tries", self.max_tries, 1, 64)
        if self.max_output_error is None and (self.inputs or self.signature or self.architecture):
            raise OptionsError("inputs, signature and architecture apply to max_output_error "
                               "(--max-output-error) only, or to --verify")
