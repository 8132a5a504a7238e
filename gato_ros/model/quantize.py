"""Precision variants of exported graphs: int8 weights (ONNX Runtime dynamic quantisation, CPU) and fp16 (GPU).

Why: a decode call multiplies one token by every weight matrix, so it is bound by streaming the weights from
memory (13.6 MB fp32 for gato-small, 226 MB for gato-79m); a prefill of 32 tokens is bound by matmul throughput.
int8 weights are 4x fewer bytes, and MLAS's u8 x s8 GEMM (AVX512-VNNI / AVX2) is faster than fp32.

How: the exporter writes linear layers on 2-D inputs as `Gemm`; ONNX Runtime's dynamic (integer-op) quantiser
handles `MatMul`, so each `Gemm(A, W, b, transB=1)` with constant W is first rewritten as `MatMul(A, W^T) + b`.
Then `quantize_dynamic` stores the weights as per-channel symmetric int8 and quantises activations per call
(ONNX Runtime fuses this into `DynamicQuantizeMatMul`). Attention score/value matmuls (both operands dynamic),
the patch convolutions, layer norms and embeddings stay fp32.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np


def gemm_to_matmul(model) -> int:
    """Rewrite constant-weight Gemm nodes as MatMul + Add in place; returns how many were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    n = 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        wname = node.input[1] + "_kn"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), wname))
        mm_out = node.output[0] + ("_mm" if len(node.input) > 2 else "")
        nodes.append(helper.make_node("MatMul", [node.input[0], wname], [mm_out], name=node.name + "_matmul"))
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=node.name + "_bias"))
        n += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for node in model.graph.node for i in node.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return n


def weight_matmuls(model) -> list[str]:
    """Names of the MatMul nodes whose constant B is a model parameter (the rewritten Gemms). Other constant
    MatMuls (the rotary half-swap permutation) stay fp32: quantising their activations per call only adds error."""
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1].endswith("_kn")]


def quantize_int8(src: Path, dst: Path) -> int:
    """Write an int8-weight copy of graph `src` to `dst`; returns the number of quantised weight matrices.

    Tried and not kept: `MatMulNBits` (8-bit blocks of 128, accuracy level 4) is faster for one-row decode calls
    (gato-79m 7.9 -> 6.6 ms) but slower for the prefill (38 -> 48 ms), which dominates a tick; 4-bit blocks halve
    the decode weights again but the prefill is slower still (M=39: 20-41 ms vs 9-17 ms per 19M weights)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    n = gemm_to_matmul(model)
    with tempfile.TemporaryDirectory() as tmp:
        mid = Path(tmp) / "matmul.onnx"
        onnx.save(model, str(mid))
        logging.disable(logging.WARNING)  # the quantiser's generic "consider pre-processing" advice
        try:
            quantize_dynamic(str(mid), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"], nodes_to_quantize=weight_matmuls(model),
                             extra_options={"MatMulConstBOnly": True})
        finally:
            logging.disable(logging.NOTSET)
    return n


def convert_fp16(src: Path, dst: Path) -> None:
    """Write a half-precision copy of graph `src` to `dst`: weights, activations and every float input and output,
    the KV cache included (`gato_ros.bundle`: an fp16 bundle's interface), by ONNX Runtime's converter
    (`onnxruntime.transformers.float16`).

    For GPUs, where fp16 halves the bytes each call streams (weights and cache) and runs on tensor cores. On the CPU
    provider it runs, slower than fp32 (ONNX Runtime 1.31 wraps most fp16 kernels in casts to fp32), which is enough
    to check an fp16 bundle's closed-loop success in the sim on any machine. Layer norms keep their statistics in
    fp32 (ONNX's stash_type 1, which the converted graphs carry); the attention mask's -inf is exact in fp16."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    logging.disable(logging.WARNING)  # the converter's notes on values it clamps into fp16's range
    try:
        model = convert_float_to_float16(model, keep_io_types=False)
    finally:
        logging.disable(logging.NOTSET)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
