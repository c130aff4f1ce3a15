"""A FaceNet-shaped frozen GraphDef: Inception-ResNet-v1, 160x160x3 in, 128-d embedding out.

The layer list follows davidsandberg/facenet's `inception_resnet_v1.py`, the
network of the 20170216-091149 model (stem, Block35 x5, Reduction-A, Block17
x10, Reduction-B, Block8 x5 + one without ReLU, average pool, 128-d bottleneck,
L2 normalisation): conv weights without biases, each followed by batch norm
kept as Consts (beta, moving mean, moving variance; gamma is a constant 1, as
slim writes it when scale=False), the residual `up` convolutions with biases.
About 22.8 million float32 values, a .pb of about 91 MB.

The real weights cannot be downloaded, so values are drawn deterministically
from a trained-looking distribution: a Laplace core with a per-layer scale
(gain / sqrt(fan-in)) plus a 2 % Student-t heavy tail. The graph is built
directly with TensorBoard's TensorFlow protos (no TensorFlow import) and is a
valid, runnable inference graph (input `input`, output `embeddings`).

`width` divides every channel count (1 = FaceNet; 8 gives a ~0.4 M-value graph
for quick runs; below 1 it multiplies them: about 0.957 gives a 100 MB graph,
0.478 a 400 MB one, as the benchmark's peak-memory part uses).
"""
from __future__ import annotations

import hashlib

import numpy

FLOAT, INT32 = 1, 3
PREFIX = "InceptionResnetV1"


def _proto():
    from tensorboard.compat.proto import graph_pb2, node_def_pb2

    return graph_pb2, node_def_pb2


def layer_seed(name: str, seed: int) -> int:
    """Return a stable 64-bit seed for a layer name (independent of build order)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# Output channels of trained convolutions differ in scale by about an order of
# magnitude; channel_gains draws each channel's gain log-uniformly over this span.
CHANNEL_GAIN_SPAN = 10.0


def trained_like(name: str, shape: tuple[int, ...], fan_in: int, seed: int = 0,
                 channel_gains: bool = False) -> numpy.ndarray:
    """Return float32 values of `shape` shaped like trained conv weights (Laplace core, heavy tail).

    Deterministic in (name, shape, seed). The per-layer scale is gain / sqrt(fan_in)
    with a gain that varies by layer, as trained layers' spreads do. channel_gains:
    also scale each output channel (the last axis) by a gain log-uniform in
    [1/sqrt(span), sqrt(span)] (span CHANNEL_GAIN_SPAN = 10x), drawn from a stream of its own
    (the values without gains are those of channel_gains=False).
    """
    rng = numpy.random.default_rng(layer_seed(name, seed))
    n = int(numpy.prod(shape))
    scale = rng.uniform(0.3, 1.2) / numpy.sqrt(max(fan_in, 1))
    values = rng.laplace(0.0, scale, n)
    tail = rng.random(n) < 0.02
    values[tail] = rng.standard_t(2.5, int(tail.sum())) * 3 * scale
    values += rng.normal(0.0, 0.05 * scale)  # trained layers are rarely centred exactly on 0
    values = values.reshape(shape)
    if channel_gains:
        gains = numpy.random.default_rng(layer_seed(name + "/channel_gains", seed)).uniform(
            -0.5, 0.5, shape[-1])
        values = values * numpy.exp(gains * numpy.log(CHANNEL_GAIN_SPAN))
    return values.astype(numpy.float32)


class GraphBuilder:
    """Appends NodeDefs to a GraphDef; every helper returns the new node's name."""

    def __init__(self, seed: int = 0, channel_gains: bool = False):
        graph_pb2, self._node_pb2 = _proto()
        self.channel_gains = channel_gains
        self.graph_def = graph_pb2.GraphDef()
        self.graph_def.versions.producer = 27
        self.seed = seed
        self.weight_count = 0

    def node(self, op, name, inputs=(), **attrs):
        node = self.graph_def.node.add(op=op, name=name)
        node.input.extend(inputs)
        for key, value in attrs.items():
            attr = node.attr[key]
            if isinstance(value, bool):
                attr.b = value
            elif isinstance(value, int) and key in ("T", "dtype", "U", "Tidx", "Tshape"):
                attr.type = value
            elif isinstance(value, int):
                attr.i = value
            elif isinstance(value, float):
                attr.f = value
            elif isinstance(value, str):
                attr.s = value.encode()
            elif isinstance(value, list):
                attr.list.i.extend(value)
            else:
                raise TypeError(f"attr {key}={value!r}")
        return name

    def const(self, name, array: numpy.ndarray):
        node = self.graph_def.node.add(op="Const", name=name)
        dtype = FLOAT if array.dtype == numpy.float32 else INT32
        node.attr["dtype"].type = dtype
        tensor = node.attr["value"].tensor
        tensor.dtype = dtype
        for size in array.shape:
            tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_content = numpy.ascontiguousarray(array).tobytes()
        if dtype == FLOAT:
            self.weight_count += array.size
        return name

    def scalar(self, name, value: float):
        return self.const(name, numpy.array(value, dtype=numpy.float32))

    def conv(self, x, channels_in, channels_out, kernel, name, stride=1, padding="SAME",
             batch_norm=True, relu=True):
        height, width = (kernel, kernel) if isinstance(kernel, int) else kernel
        shape = (height, width, channels_in, channels_out)
        weights = self.const(f"{name}/weights", trained_like(name, shape, height * width * channels_in, self.seed,
                                                                   self.channel_gains))
        y = self.node("Conv2D", f"{name}/Conv2D", [x, weights], T=FLOAT, strides=[1, stride, stride, 1],
                      padding=padding, data_format="NHWC", use_cudnn_on_gpu=True)
        rng = numpy.random.default_rng(layer_seed(name + "/bn", self.seed))
        if batch_norm:
            gamma = self.const(f"{name}/BatchNorm/Const", numpy.ones(channels_out, numpy.float32))
            beta = self.const(f"{name}/BatchNorm/beta",
                              rng.laplace(0.0, 0.1, channels_out).astype(numpy.float32))
            mean = self.const(f"{name}/BatchNorm/moving_mean",
                              rng.normal(0.0, 0.3, channels_out).astype(numpy.float32))
            variance = self.const(f"{name}/BatchNorm/moving_variance",
                                  rng.lognormal(-1.0, 1.0, channels_out).astype(numpy.float32))
            y = self.node("FusedBatchNormV3", f"{name}/BatchNorm/FusedBatchNormV3",
                          [y, gamma, beta, mean, variance], T=FLOAT, U=FLOAT, epsilon=0.001,
                          is_training=False, data_format="NHWC")
        else:
            biases = self.const(f"{name}/biases", rng.laplace(0.0, 0.02, channels_out).astype(numpy.float32))
            y = self.node("BiasAdd", f"{name}/BiasAdd", [y, biases], T=FLOAT, data_format="NHWC")
        if relu:
            y = self.node("Relu", f"{name}/Relu", [y], T=FLOAT)
        return y

    def pool(self, op, x, kernel, stride, name, padding="VALID"):
        return self.node(op, name, [x], T=FLOAT, ksize=[1, kernel, kernel, 1],
                         strides=[1, stride, stride, 1], padding=padding, data_format="NHWC")

    def concat(self, inputs, name):
        axis = self.const(f"{name}/axis", numpy.array(3, dtype=numpy.int32))
        return self.node("ConcatV2", name, list(inputs) + [axis], T=FLOAT, N=len(inputs), Tidx=INT32)

    def residual(self, x, up, scale, name, relu=True):
        scaled = self.node("Mul", f"{name}/mul", [self.scalar(f"{name}/scale", scale), up], T=FLOAT)
        y = self.node("AddV2", f"{name}/add", [x, scaled], T=FLOAT)
        return self.node("Relu", f"{name}/Relu", [y], T=FLOAT) if relu else y


def _channels(n: int, width: float) -> int:
    """Return n channels divided by width, at least 1 (width below 1 makes the graph larger)."""
    return max(int(n / width), 1)


def _block35(b, x, c, w, name):
    b0 = b.conv(x, c, _channels(32, w), 1, f"{name}/Branch_0/Conv2d_1x1")
    b1 = b.conv(x, c, _channels(32, w), 1, f"{name}/Branch_1/Conv2d_0a_1x1")
    b1 = b.conv(b1, _channels(32, w), _channels(32, w), 3, f"{name}/Branch_1/Conv2d_0b_3x3")
    b2 = b.conv(x, c, _channels(32, w), 1, f"{name}/Branch_2/Conv2d_0a_1x1")
    b2 = b.conv(b2, _channels(32, w), _channels(32, w), 3, f"{name}/Branch_2/Conv2d_0b_3x3")
    b2 = b.conv(b2, _channels(32, w), _channels(32, w), 3, f"{name}/Branch_2/Conv2d_0c_3x3")
    mixed = b.concat([b0, b1, b2], f"{name}/concat")
    up = b.conv(mixed, _channels(96, w), c, 1, f"{name}/Conv2d_1x1", batch_norm=False, relu=False)
    return b.residual(x, up, 0.17, name)


def _block17(b, x, c, w, name):
    b0 = b.conv(x, c, _channels(128, w), 1, f"{name}/Branch_0/Conv2d_1x1")
    b1 = b.conv(x, c, _channels(128, w), 1, f"{name}/Branch_1/Conv2d_0a_1x1")
    b1 = b.conv(b1, _channels(128, w), _channels(128, w), (1, 7), f"{name}/Branch_1/Conv2d_0b_1x7")
    b1 = b.conv(b1, _channels(128, w), _channels(128, w), (7, 1), f"{name}/Branch_1/Conv2d_0c_7x1")
    mixed = b.concat([b0, b1], f"{name}/concat")
    up = b.conv(mixed, _channels(256, w), c, 1, f"{name}/Conv2d_1x1", batch_norm=False, relu=False)
    return b.residual(x, up, 0.10, name)


def _block8(b, x, c, w, name, relu=True):
    b0 = b.conv(x, c, _channels(192, w), 1, f"{name}/Branch_0/Conv2d_1x1")
    b1 = b.conv(x, c, _channels(192, w), 1, f"{name}/Branch_1/Conv2d_0a_1x1")
    b1 = b.conv(b1, _channels(192, w), _channels(192, w), (1, 3), f"{name}/Branch_1/Conv2d_0b_1x3")
    b1 = b.conv(b1, _channels(192, w), _channels(192, w), (3, 1), f"{name}/Branch_1/Conv2d_0c_3x1")
    mixed = b.concat([b0, b1], f"{name}/concat")
    up = b.conv(mixed, _channels(384, w), c, 1, f"{name}/Conv2d_1x1", batch_norm=False, relu=False)
    return b.residual(x, up, 0.20 if relu else 1.0, name, relu=relu)


def build_facenet(width: int = 1, image_size: int = 160, seed: int = 0, channel_gains: bool = False):
    """Return (GraphDef, number of float32 values) of Inception-ResNet-v1 with a 128-d embedding.

    width: divides every channel count (1 = FaceNet 20170216-091149's shape; a
    float below 1 multiplies them, the values per layer growing as 1 / width**2).
    image_size: input height and width (160 as FaceNet). seed: the weights' seed.
    channel_gains: scale each output channel of every kernel by its own gain
    (trained_like), as trained nets' channels differ (benchmarks/granularity.py).
    """
    b = GraphBuilder(seed, channel_gains)
    p = PREFIX
    x = _placeholder(b, image_size)
    c = lambda n: _channels(n, width)  # noqa: E731
    x = b.conv(x, 3, c(32), 3, f"{p}/Conv2d_1a_3x3", stride=2, padding="VALID")
    x = b.conv(x, c(32), c(32), 3, f"{p}/Conv2d_2a_3x3", padding="VALID")
    x = b.conv(x, c(32), c(64), 3, f"{p}/Conv2d_2b_3x3")
    x = b.pool("MaxPool", x, 3, 2, f"{p}/MaxPool_3a_3x3")
    x = b.conv(x, c(64), c(80), 1, f"{p}/Conv2d_3b_1x1", padding="VALID")
    x = b.conv(x, c(80), c(192), 3, f"{p}/Conv2d_4a_3x3", padding="VALID")
    x = b.conv(x, c(192), c(256), 3, f"{p}/Conv2d_4b_3x3", stride=2, padding="VALID")
    for i in range(5):
        x = _block35(b, x, c(256), width, f"{p}/Repeat/block35_{i + 1}")
    m = f"{p}/Mixed_6a"
    b0 = b.conv(x, c(256), c(384), 3, f"{m}/Branch_0/Conv2d_1a_3x3", stride=2, padding="VALID")
    b1 = b.conv(x, c(256), c(192), 1, f"{m}/Branch_1/Conv2d_0a_1x1")
    b1 = b.conv(b1, c(192), c(192), 3, f"{m}/Branch_1/Conv2d_0b_3x3")
    b1 = b.conv(b1, c(192), c(256), 3, f"{m}/Branch_1/Conv2d_1a_3x3", stride=2, padding="VALID")
    b2 = b.pool("MaxPool", x, 3, 2, f"{m}/Branch_2/MaxPool_1a_3x3")
    x = b.concat([b0, b1, b2], f"{m}/concat")
    channels = c(384) + c(256) + c(256)
    for i in range(10):
        x = _block17(b, x, channels, width, f"{p}/Repeat_1/block17_{i + 1}")
    m = f"{p}/Mixed_7a"
    b0 = b.conv(x, channels, c(256), 1, f"{m}/Branch_0/Conv2d_0a_1x1")
    b0 = b.conv(b0, c(256), c(384), 3, f"{m}/Branch_0/Conv2d_1a_3x3", stride=2, padding="VALID")
    b1 = b.conv(x, channels, c(256), 1, f"{m}/Branch_1/Conv2d_0a_1x1")
    b1 = b.conv(b1, c(256), c(256), 3, f"{m}/Branch_1/Conv2d_1a_3x3", stride=2, padding="VALID")
    b2 = b.conv(x, channels, c(256), 1, f"{m}/Branch_2/Conv2d_0a_1x1")
    b2 = b.conv(b2, c(256), c(256), 3, f"{m}/Branch_2/Conv2d_0b_3x3")
    b2 = b.conv(b2, c(256), c(256), 3, f"{m}/Branch_2/Conv2d_1a_3x3", stride=2, padding="VALID")
    b3 = b.pool("MaxPool", x, 3, 2, f"{m}/Branch_3/MaxPool_1a_3x3")
    x = b.concat([b0, b1, b2, b3], f"{m}/concat")
    channels = c(384) + c(256) + c(256) + channels
    for i in range(5):
        x = _block8(b, x, channels, width, f"{p}/Repeat_2/block8_{i + 1}")
    x = _block8(b, x, channels, width, f"{p}/Block8", relu=False)
    side = _spatial_after_stem(image_size)
    x = b.pool("AvgPool", x, side, 1, f"{p}/Logits/AvgPool_1a_8x8")
    shape = b.const(f"{p}/Logits/Flatten/shape", numpy.array([-1, channels], dtype=numpy.int32))
    x = b.node("Reshape", f"{p}/Logits/Flatten/Reshape", [x, shape], T=FLOAT, Tshape=INT32)
    weights = b.const(f"{p}/Bottleneck/weights",
                      trained_like(f"{p}/Bottleneck", (channels, 128), channels, seed, channel_gains))
    x = b.node("MatMul", f"{p}/Bottleneck/MatMul", [x, weights], T=FLOAT,
               transpose_a=False, transpose_b=False)
    x = _dense_batch_norm(b, x, 128, f"{p}/Bottleneck/BatchNorm")
    _l2_normalize(b, x, "embeddings")
    return b.graph_def, b.weight_count


def _placeholder(b, image_size):
    node = b.graph_def.node.add(op="Placeholder", name="input")
    node.attr["dtype"].type = FLOAT
    shape = node.attr["shape"].shape
    for size in (-1, image_size, image_size, 3):
        shape.dim.add(size=size)
    return "input"


def _spatial_after_stem(size):
    valid = lambda n, k, s: (n - k) // s + 1  # noqa: E731
    size = valid(size, 3, 2)  # Conv2d_1a
    size = valid(size, 3, 1)  # Conv2d_2a
    size = valid(size, 3, 2)  # MaxPool_3a
    size = valid(size, 3, 1)  # Conv2d_4a
    size = valid(size, 3, 2)  # Conv2d_4b
    size = valid(size, 3, 2)  # Mixed_6a
    return valid(size, 3, 2)  # Mixed_7a


def _dense_batch_norm(b, x, channels, name):
    """Batch norm on a [batch, channels] tensor with Mul/Add (FusedBatchNorm wants 4-D)."""
    rng = numpy.random.default_rng(layer_seed(name, b.seed))
    beta = rng.laplace(0.0, 0.1, channels)
    mean = rng.normal(0.0, 0.3, channels)
    variance = rng.lognormal(-1.0, 1.0, channels)
    multiplier = b.const(f"{name}/batchnorm/mul_factor",
                         (1.0 / numpy.sqrt(variance + 0.001)).astype(numpy.float32))
    offset = b.const(f"{name}/batchnorm/offset", (beta - mean / numpy.sqrt(variance + 0.001)).astype(numpy.float32))
    y = b.node("Mul", f"{name}/batchnorm/mul", [x, multiplier], T=FLOAT)
    return b.node("AddV2", f"{name}/batchnorm/add", [y, offset], T=FLOAT)


def _l2_normalize(b, x, name):
    square = b.node("Square", f"{name}/Square", [x], T=FLOAT)
    axis = b.const(f"{name}/axis", numpy.array([1], dtype=numpy.int32))
    total = b.node("Sum", f"{name}/Sum", [square, axis], T=FLOAT, Tidx=INT32, keep_dims=True)
    floor = b.scalar(f"{name}/epsilon", 1e-10)
    total = b.node("Maximum", f"{name}/Maximum", [total, floor], T=FLOAT)
    inverse = b.node("Rsqrt", f"{name}/Rsqrt", [total], T=FLOAT)
    return b.node("Mul", name, [x, inverse], T=FLOAT)


def write_facenet(path, width: int = 1, seed: int = 0) -> int:
    """Build the graph and write it to `path` (deterministic bytes); returns the number of float32 values."""
    graph_def, count = build_facenet(width=width, seed=seed)
    with open(path, "wb") as stream:
        stream.write(graph_def.SerializeToString(deterministic=True))
    return count


def cached_graph(cache, width: float = 1):
    """Return the path of the FaceNet-shaped graph of `width` under the folder `cache`, writing it
    (atomically: a temporary name, then rename) when it is missing. Returns a pathlib.Path."""
    from pathlib import Path

    path = Path(cache) / f"facenet-w{width}.pb"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        write_facenet(temporary, width=width)
        temporary.replace(path)
    return path
