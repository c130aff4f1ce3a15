"""Variable names for a `.keras` file's weights, from its config.json (no Keras import).

A `.keras` file stores a layer's variables by position, under a key made from
the layer's class, not its name: the model's layers in order, each
`snake_case(class name)`, numbered from the second of a class on
(`layers/dense/vars/0` for the first Dense, whatever its name,
`layers/dense_1/...` for the second; Keras's saving_lib names them so).
For Keras's own layers the order is fixed by the layer's class
and config (Dense: kernel, then bias when use_bias), so config.json is enough
to name them `dense/kernel`, which is what `whitelisted` users write. The
table covers the common layers only; a layer not in it, or one whose stored
variables are not as many as the table says (quantized, a new Keras
version), keeps its positional names. Names are aliases: nothing depends on
them but whitelist matching.
"""
from __future__ import annotations

import json
import re

# class name -> [(variable name, config flag that must be true for it to exist, or None)]
VARIABLE_ORDER = {
    "Dense": [("kernel", None), ("bias", "use_bias")],
    "Conv1D": [("kernel", None), ("bias", "use_bias")],
    "Conv2D": [("kernel", None), ("bias", "use_bias")],
    "Conv3D": [("kernel", None), ("bias", "use_bias")],
    "Conv1DTranspose": [("kernel", None), ("bias", "use_bias")],
    "Conv2DTranspose": [("kernel", None), ("bias", "use_bias")],
    "Conv3DTranspose": [("kernel", None), ("bias", "use_bias")],
    "Embedding": [("embeddings", None)],
    "BatchNormalization": [("gamma", "scale"), ("beta", "center"), ("moving_mean", None), ("moving_variance", None)],
    "LayerNormalization": [("gamma", "scale"), ("beta", "center")],
}


def snake_case(name: str) -> str:
    """Return a class name as Keras's saving keys spell it: BatchNormalization -> batch_normalization."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def variable_names(config: bytes, datasets) -> dict[str, tuple[str, ...]]:
    """Return {dataset path: names} for the weights of Keras's own layers in a `.keras` file.

    config: the bytes of config.json. datasets: the HDF5 dataset paths of
    model.weights.h5. Names are "LAYER/VARIABLE" and, with the model's name,
    "MODEL/LAYER/VARIABLE" (the variable's own path). An unreadable or
    unexpected config gives {} (the positional names still work).
    """
    try:
        model = json.loads(config)
        layers = model["config"]["layers"]
        model_name = model["config"].get("name")
    except (ValueError, KeyError, TypeError):
        return {}
    if not isinstance(layers, list):
        return {}
    stored: dict[str, list[str]] = {}
    for path in datasets:
        parts = path.split("/")
        if len(parts) == 4 and parts[0] == "layers" and parts[2] == "vars" and parts[3].isdigit():
            stored.setdefault(parts[1], []).append(path)
    names = {}
    used: dict[str, int] = {}
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
            return {}
        key = snake_case(layer["class_name"])
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        settings = layer.get("config")
        if not isinstance(settings, dict):
            continue
        name = settings.get("name")
        order = VARIABLE_ORDER.get(layer["class_name"])
        if not isinstance(name, str) or order is None or key not in stored:
            continue
        present = [variable for variable, flag in order if flag is None or settings.get(flag, True)]
        paths = sorted(stored[key], key=lambda p: int(p.rsplit("/", 1)[1]))
        if len(paths) != len(present):
            continue
        for path, variable in zip(paths, present):
            own = f"{name}/{variable}"
            names[path] = (own, f"{model_name}/{own}") if isinstance(model_name, str) else (own,)
    return names
