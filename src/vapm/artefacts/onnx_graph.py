"""ONNX graphs with deterministic bytes: the same network always gives the same file.

tf2onnx names what it creates from process-wide counters (`unk__74`, `const_fold_opt__72`, `Transpose__56`),
so two exports of one Keras model differ in bytes, within a process and across processes. DVC hashes the model
folder, so `canonical` rewrites a graph into one form that depends on its structure and weights only: nodes in a
topological order whose ties are broken by what the nodes compute, every internal name replaced by its place in
that order, the batch dimension called `batch`, no doc strings, value_info or producer version.

tf2onnx's optimizers also differ in what they leave behind: they walk sets of node objects, ordered by memory
address, so one process keeps a Reshape that changes no shape where another folds it (EfficientNet-Lite0 at 32
pixels, whose last blocks' maps are 1x1: 150 or 151 nodes). `canonical` drops every such no-op Reshape first, so
both give one file.
"""
from __future__ import annotations

import hashlib
from typing import Any

BATCH_DIM = "batch"
PRODUCER = "vapm"


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\x00")
    return h.hexdigest()


def _attribute_bytes(node: Any) -> bytes:
    return b"".join(a.SerializeToString(deterministic=True) for a in sorted(node.attribute, key=lambda a: a.name))


def _signatures(graph: Any) -> dict[str, str]:
    """A digest of what each value holds: its producer's op, attributes and inputs' digests, or its weights."""
    digest: dict[str, str] = {"": "absent"}  # an optional input left out
    for tensor in graph.initializer:
        anonymous = type(tensor).FromString(tensor.SerializeToString())
        anonymous.name = ""
        digest[tensor.name] = _digest("init", anonymous.SerializeToString(deterministic=True))
    for value in graph.input:
        digest.setdefault(value.name, _digest("input", value.name))
    pending = list(graph.node)
    while pending:
        ready = [node for node in pending if all(name in digest for name in node.input)]
        if not ready:
            raise ValueError("the ONNX graph has a cycle or an input nothing produces")
        for node in ready:
            base = _digest(node.domain, node.op_type, _attribute_bytes(node), *(digest[i] for i in node.input))
            for k, name in enumerate(node.output):
                digest[name] = _digest(base, str(k))
        done = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in done]
    return digest


def _static_shapes(model: Any) -> dict[str, list[int | None]]:
    """Each value's shape as ONNX's shape inference finds it; None for a dimension it cannot name a size for."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        if value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                  for d in value.type.tensor_type.shape.dim]
    return shapes


def _is_noop_reshape(node: Any, shapes: dict[str, list[int | None]], constants: dict[str, Any]) -> bool:
    """A Reshape to a constant shape that its input already has: every dimension but the first is the same known
    size, and the first is kept (-1, or 0 meaning "as the input")."""
    if node.op_type != "Reshape" or node.input[1] not in constants or node.input[0] not in shapes:
        return False
    from onnx import numpy_helper

    target = numpy_helper.to_array(constants[node.input[1]]).tolist()
    have = shapes[node.input[0]]
    if len(target) != len(have) or not target or any(size is None for size in have[1:]):
        return False
    zero_copies = not any(a.name == "allowzero" and a.i for a in node.attribute)
    first_kept = target[0] == -1 or (target[0] == 0 and zero_copies) or (have[0] is not None and target[0] == have[0])
    return first_kept and target[1:] == have[1:]


def noop_reshapes(model: Any) -> dict[str, str]:
    """Output -> input of each Reshape that changes no shape (except those giving a graph output, whose name
    callers use)."""
    graph = model.graph
    shapes = _static_shapes(model)
    constants = {t.name: t for t in graph.initializer}
    outputs = {value.name for value in graph.output}
    return {node.output[0]: node.input[0] for node in graph.node
            if _is_noop_reshape(node, shapes, constants) and node.output[0] not in outputs}


def without_noop_reshapes(model: Any) -> Any:
    """The model with every Reshape that changes no shape taken out (its consumers read its input)."""
    graph = model.graph
    bypass = noop_reshapes(model)
    if not bypass:
        return model
    kept = [node for node in graph.node if not (node.op_type == "Reshape" and node.output[0] in bypass)]
    for node in kept:
        node.input[:] = [_source(name, bypass) for name in node.input]
    graph.ClearField("node")
    graph.node.extend(kept)
    return model


def _source(name: str, bypass: dict[str, str]) -> str:
    while name in bypass:
        name = bypass[name]
    return name


def canonical(model: Any) -> Any:
    """A copy of an ONNX ModelProto in canonical form (see the module's docstring); it computes the same thing."""
    import onnx

    model = without_noop_reshapes(onnx.ModelProto.FromString(model.SerializeToString()))
    graph = model.graph
    digest = _signatures(graph)
    kept = {value.name for value in graph.input} | {value.name for value in graph.output}

    def node_key(node: Any) -> str:
        return _digest(*(digest[name] for name in node.output))

    order, available = [], {value.name for value in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = sorted(graph.node, key=node_key)
    while pending:
        k = next(k for k, node in enumerate(pending) if all(name in available for name in node.input))
        node = pending.pop(k)
        order.append(node)
        available.update(node.output)

    rename: dict[str, str] = {name: name for name in kept}
    rename[""] = ""
    initializers = {t.name: t for t in graph.initializer}
    used_initializers = []
    for i, node in enumerate(order):
        for name in node.input:
            if name in initializers and name not in rename:
                rename[name] = f"w{len(used_initializers)}"
                used_initializers.append(initializers[name])
        for k, name in enumerate(node.output):
            rename.setdefault(name, f"n{i}_{k}")
    for i, node in enumerate(order):
        node.name = f"{node.op_type}_{i}"
        node.doc_string = ""
        node.input[:] = [rename[name] for name in node.input]
        node.output[:] = [rename[name] for name in node.output]
    for tensor in used_initializers:
        tensor.name = rename[tensor.name]
        tensor.doc_string = ""
    graph.ClearField("node")
    graph.node.extend(order)
    graph.ClearField("initializer")
    graph.initializer.extend(used_initializers)
    graph.ClearField("value_info")
    graph.doc_string = ""
    graph.name = "vapm"
    for value in [*graph.input, *graph.output]:
        value.doc_string = ""
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = BATCH_DIM
    model.producer_name, model.producer_version, model.doc_string = PRODUCER, "", ""
    model.ClearField("metadata_props")
    return model


def serialised(model: Any) -> bytes:
    return canonical(model).SerializeToString(deterministic=True)
