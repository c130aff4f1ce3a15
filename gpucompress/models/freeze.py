"""Freeze a SavedModel's signature into a frozen GraphDef (`compress --to-graphdef`).

TensorFlow's `convert_variables_to_constants_v2` turns the signature's
concrete function into a graph whose variables are Const nodes (and inlines
its functions); that graph is then an ordinary GraphDefModel, clustered by the
frozen-graph rule (every floating Const). The frozen graph's inputs are the
signature's Placeholders, its outputs the `Identity*` nodes of the signature's
outputs, as `tf.compat.v1.import_graph_def` sees them.

TensorFlow is imported here only, inside the function that needs it.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import FormatError, InputError
from ..files import check_tree
from .graphdef import GraphDefModel
from .savedmodel import _check_graph, _tf, is_saved_model_dir

DEFAULT_SIGNATURE = "serving_default"
FROZEN_SUFFIX = ".min.pb"


def frozen_output(path: str | os.PathLike) -> Path:
    """Return the default output of `--to-graphdef`: SavedModel folder `saved` -> `saved.min.pb`."""
    path = Path(path)
    return path.with_name(path.name + FROZEN_SUFFIX)


def freeze_saved_model(path: str | os.PathLike, signature: str = DEFAULT_SIGNATURE) -> GraphDefModel:
    """Return the frozen GraphDef of a SavedModel's signature as a GraphDefModel.

    path: a SavedModel folder. signature: the signature key (default
    "serving_default"). The same SavedModel gives the same GraphDef bytes.
    Raises InputError (not a SavedModel folder) or FormatError (it does not
    load, has no such signature, or cannot be frozen).
    """
    path = Path(path)
    if not is_saved_model_dir(path):
        raise InputError(f"{path}: --to-graphdef needs a SavedModel folder (with saved_model.pb)")
    check_tree(path)  # TensorFlow would follow links out of the folder
    _check_graph(path, str(path))
    tf = _tf()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        loaded = tf.saved_model.load(str(path))
    except (tf.errors.OpError, ValueError, KeyError, TypeError, AssertionError) as error:
        raise FormatError(f"{path}: SavedModel does not load ({_first_line(error)})") from None
    signatures = getattr(loaded, "signatures", {})
    if signature not in signatures:
        known = ", ".join(sorted(signatures)) or "none"
        raise FormatError(f"{path}: no signature {signature!r} to freeze (signatures: {known})")
    try:
        frozen = convert_variables_to_constants_v2(signatures[signature])
    except (tf.errors.OpError, ValueError, KeyError, TypeError) as error:
        raise FormatError(f"{path}: cannot freeze signature {signature!r} ({_first_line(error)})") from None
    data = frozen.graph.as_graph_def().SerializeToString(deterministic=True)
    return GraphDefModel.from_bytes(data, source=f"{path} (frozen)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
