"""Export a prepared Llama-family model to ONNX for the ONNX Runtime engine (`engine.onnx.OnnxForward`).

The graph comes from onnxruntime-genai's model builder (`python -m onnxruntime_genai.models.builder`,
given the local directory: no hub): int4 weights as `MatMulNBits` (blocks of 32, int8 activations
on CPU: `accuracy_level` 4), attention as `GroupQueryAttention` with rotary inside it, and the
token embedding left out (`exclude_embeds`): the graph takes `inputs_embeds`, so embed fusion and
the prompt splicing stay in torch exactly as they are.

One edit follows (`_gather_logits`): the builder's graph computes the head for every position of
every row (`[B, S, V]` logits: 200 MB of float32 and ~20 % of the work for one 1,024-token prefill
chunk). A `logits_index` input picks the positions whose logits are wanted (flat indices into
`B x S`): the head runs on those only and `logits` is `[K, V]`.

The result is a directory (model.onnx + model.onnx.data + genai_config.json) written to a temporary
directory and renamed into place, with a JSON sidecar naming the SHA-256 of every file, like the
other prepared weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modalities import paths
from modalities.paths import sha256_file

__all__ = [
    "LOGITS_INDEX",
    "ONNX_FILES",
    "export_onnx",
    "is_complete",
    "packaged_onnx_dir",
    "prepare_onnx_for",
    "prepare_onnx_llm",
    "verify_onnx_dir",
]

SIDECAR = "chorus-onnx.json"
ONNX_FILES = ("model.onnx", "model.onnx.data", "genai_config.json")
LOGITS_INDEX = "logits_index"
PRECISIONS = ("int4", "fp32")
BUILDER_TIMEOUT_S = 900


def packaged_onnx_dir(precision: str = "int4") -> Path:
    return paths.models_dir() / f"{paths.PACKAGED_LLM_NAME}-onnx-{precision}"


def is_complete(model_dir: Path) -> bool:
    """Complete when the sidecar exists and every file it names exists."""
    try:
        record = json.loads((Path(model_dir) / SIDECAR).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    files = record.get("files_sha256", {})
    return bool(files) and all((Path(model_dir) / name).is_file() for name in files)


def verify_onnx_dir(model_dir: Path) -> bool:
    """Recompute every file's SHA-256 and compare it with the sidecar."""
    if not is_complete(model_dir):
        return False
    record = json.loads((Path(model_dir) / SIDECAR).read_text())
    return all(sha256_file(Path(model_dir) / name) == digest for name, digest in record["files_sha256"].items())


def export_onnx(hf_dir: Path, out_dir: Path, precision: str = "int4") -> dict:
    """Build the ONNX model of the transformers directory `hf_dir` into `out_dir` (which must not
    exist); returns the sidecar record (also written into `out_dir`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True)
    command = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf_dir), "-o", str(out_dir), "-p", precision, "-e", "cpu",
        "--extra_options", "exclude_embeds=true",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=BUILDER_TIMEOUT_S, check=False)
    if done.returncode != 0 or not (out_dir / "model.onnx").is_file():
        raise RuntimeError(f"ONNX export of {hf_dir} failed ({done.returncode}): {done.stderr[-2000:]}")
    if precision == "int4":
        _requantize_blocks(out_dir, Path(hf_dir))
    _gather_logits(out_dir / "model.onnx")
    record = {
        "source": str(hf_dir),
        "precision": precision,
        "builder": _version("onnxruntime-genai"),
        "onnxruntime": _version("onnxruntime"),
        "export_seconds": round(time.perf_counter() - started, 1),
        "files_sha256": {name: sha256_file(out_dir / name) for name in ONNX_FILES},
    }
    (out_dir / SIDECAR).write_text(json.dumps(record, indent=2) + "\n")  # last: is_complete checks it
    return record


def prepare_onnx_llm(force: bool = False) -> Path:
    """The packaged model's int4 export (made now from the prepared model if absent); idempotent."""
    from modalities.llm.weights import prepare_llm

    return _prepare(prepare_llm(), packaged_onnx_dir(), force=force)


def prepare_onnx_for(hf_dir: Path, force: bool = False) -> Path:
    """The int4 export of a local transformers directory: the packaged one's, or one made on first use
    under the cache (named by the directory's path and its config's hash)."""
    hf_dir = Path(hf_dir).resolve()
    if hf_dir == paths.packaged_llm_dir().resolve():
        return _prepare(hf_dir, packaged_onnx_dir(), force=force)
    digest = hashlib.sha256(str(hf_dir).encode() + sha256_file(hf_dir / "config.json").encode()).hexdigest()[:16]
    return _prepare(hf_dir, paths.models_dir() / f"onnx-int4-{hf_dir.name}-{digest}", force=force)


def _prepare(hf_dir: Path, target: Path, precision: str = "int4", force: bool = False) -> Path:
    if is_complete(target) and not force:
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        staged = tmp / "model"
        export_onnx(hf_dir, staged, precision)
        staged.chmod(0o755)
        paths.install_prepared(staged, target, is_complete, force=force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _gather_logits(model_path: Path) -> None:
    """Add the `logits_index` input: the head runs on `reshape(hidden, [-1, H])[logits_index]` only."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path), load_external_data=False)  # weights stay in model.onnx.data
    graph = model.graph
    output = next(o for o in graph.output if o.name == "logits")
    head = next(n for n in graph.node if "logits" in n.output or n.name.startswith("/lm_head/"))
    if head.output[0] != "logits":
        raise RuntimeError(f"unexpected graph: the head node {head.name} does not write 'logits' directly")
    hidden = head.input[0]
    hidden_size = _input_width(graph, hidden)
    shape = helper.make_tensor("/chorus/logits_index/shape", TensorProto.INT64, [2], [-1, hidden_size])
    graph.initializer.append(shape)
    flat, picked = "/chorus/logits_index/flat", "/chorus/logits_index/picked"
    nodes = [
        helper.make_node("Reshape", [hidden, shape.name], [flat], name="/chorus/logits_index/Reshape"),
        helper.make_node("Gather", [flat, LOGITS_INDEX], [picked], name="/chorus/logits_index/Gather", axis=0),
    ]
    position = list(graph.node).index(head)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    head.input[0] = picked
    graph.input.append(helper.make_tensor_value_info(LOGITS_INDEX, TensorProto.INT64, ["num_logits"]))
    vocab = output.type.tensor_type.shape.dim[-1].dim_value
    graph.output.remove(output)
    graph.output.append(helper.make_tensor_value_info("logits", output.type.tensor_type.elem_type, ["num_logits", vocab]))
    onnx.save(model, str(model_path))


_WEIGHT = re.compile(
    r"^(?:model\.layers\.(\d+)\.(attn|mlp)\.(qkv_proj|o_proj|gate_up_proj|gate_proj|up_proj|down_proj)|(lm_head))"
    r"\.MatMul\.weight_Q4$"
)
_HF_NAMES = {
    "qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o_proj": ("self_attn.o_proj",),
    "gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "gate_proj": ("mlp.gate_proj",),
    "up_proj": ("mlp.up_proj",),
    "down_proj": ("mlp.down_proj",),
}
BLOCK = 32


def _requantize_blocks(out_dir: Path, hf_dir: Path) -> None:
    """Replace the builder's int4 weights with an exact-offset blocking of the float weights.

    The builder rounds every block of 32 weights to 16 levels symmetric around 0 (or with an integer
    zero point). A weight that already is a 4-bit block with a float minimum (GGUF Q4_1: w = d*q + m,
    q in 0..15, what SmolLM2's checkpoint is) then lands between levels, and the error is that of a
    second quantization: greedy answers follow fp32's only ~70 % of the time. Here each block keeps
    its own 16 levels exactly: scale d = (max - min) / 15, codes q = round((w - min) / d), stored with
    MatMulNBits' default zero point (8, the kernel's fast path), so the kernel computes
    x . (q - 8) d and the rest of every block, its offset (m + 8d) times the sum of the block's
    inputs, is added by a small float MatMul per projection (the block sums are shared by the
    projections reading the same input). For Q4_1 weights this is lossless; for others it is
    asymmetric round-to-nearest with a float zero point. The tied head (Q8_0 in the GGUF, symmetric
    int8 blocks of 32) becomes an 8-bit MatMulNBits with absmax / 127 scales: lossless too.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from safetensors import safe_open

    model_path = out_dir / "model.onnx"
    model = onnx.load(str(model_path))  # with its weights: they are rewritten
    graph = model.graph
    _fuse_gate_up(graph)
    initializers = {init.name: init for init in graph.initializer}
    weights: dict[str, np.ndarray] = {}
    for path in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="np") as handle:
            for key in handle.keys():
                if key.endswith(".weight") and ("layers." in key or "embed_tokens" in key or "lm_head" in key):
                    weights[key] = handle.get_tensor(key)
    sums: dict[str, str] = {}  # an input's block sums, computed once
    new_nodes: list[tuple[int, list]] = []
    for position, node in enumerate(graph.node):
        if node.op_type != "MatMulNBits":
            continue
        match = _WEIGHT.match(node.input[1])
        if match is None or len(node.input) > 3:
            raise RuntimeError(f"unexpected MatMulNBits {node.name} ({list(node.input)}): cannot requantize it")
        layer, _, kind, head = match.groups()
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs["block_size"] != BLOCK:
            raise RuntimeError(f"{node.name}: block size {attrs['block_size']}, expected {BLOCK}")
        if head:
            table = weights.get("lm_head.weight", weights.get("model.embed_tokens.weight"))
            packed, scales = _int8_blocks(table.astype(np.float32))
            for attr in node.attribute:
                if attr.name == "bits":
                    attr.i = 8
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(packed, node.input[1]))
            initializers[node.input[2]].CopyFrom(numpy_helper.from_array(scales, node.input[2]))
            continue
        names = [f"model.layers.{layer}.{name}.weight" for name in _HF_NAMES[kind]]
        weight = np.concatenate([weights[name] for name in names]).astype(np.float32)  # [N, K]
        packed, scales, offsets = _int4_blocks(weight)
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(packed, node.input[1]))
        initializers[node.input[2]].CopyFrom(numpy_helper.from_array(scales, node.input[2]))
        source, stem = node.input[0], node.name.rsplit("/", 1)[0]
        added = []
        if source not in sums:
            sums[source] = f"{stem}/chorus_block_sums"
            grouped = f"{stem}/chorus_blocks"
            shape = numpy_helper.from_array(np.array([0, 0, -1, BLOCK], dtype=np.int64), f"{stem}/chorus_blocks_shape")
            axes = numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{stem}/chorus_sum_axes")
            graph.initializer.extend([shape, axes])
            added += [helper.make_node("Reshape", [source, shape.name], [grouped], name=f"{stem}/chorus_Reshape"),
                      helper.make_node("ReduceSum", [grouped, axes.name], [sums[source]], name=f"{stem}/chorus_ReduceSum",
                                       keepdims=0)]
        offset = numpy_helper.from_array(np.ascontiguousarray(offsets.T), f"{stem}/chorus_block_offsets")  # [K/32, N]
        graph.initializer.append(offset)
        raw, correction = f"{node.output[0]}/chorus_raw", f"{stem}/chorus_offset_term"
        added += [helper.make_node("MatMul", [sums[source], offset.name], [correction], name=f"{stem}/chorus_MatMul"),
                  helper.make_node("Add", [raw, correction], [node.output[0]], name=f"{stem}/chorus_Add")]
        node.output[0] = raw
        new_nodes.append((position, added))
    for position, added in reversed(new_nodes):  # after each MatMulNBits, in order
        for offset_, extra in enumerate(added):
            graph.node.insert(position + 1 + offset_, extra)
    data = out_dir / "model.onnx.data"
    data.unlink()
    onnx.save(model, str(model_path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=data.name, size_threshold=1024)
    data.chmod(0o644)  # onnx writes it owner-only; replicas of other users read it


def _fuse_gate_up(graph) -> None:
    """Each layer's gate and up projections (same input) as one `MatMulNBits` followed by a Split into
    the two outputs the MLP reads: one kernel call and, after `_requantize_blocks`, one offset term
    instead of two each (~0.6 ms of a ~13 ms 1-row step on SmolLM2-135M)."""
    import numpy as np
    from onnx import helper, numpy_helper

    nodes = list(graph.node)
    initializers = {init.name: init for init in graph.initializer}
    by_weight = {n.input[1]: n for n in nodes if n.op_type == "MatMulNBits"}
    for gate_weight, gate in list(by_weight.items()):
        match = _WEIGHT.match(gate_weight)
        if match is None or match.group(3) != "gate_proj":
            continue
        up = by_weight.get(gate_weight.replace("gate_proj", "up_proj"))
        if up is None or up.input[0] != gate.input[0] or len(gate.input) > 3 or len(up.input) > 3:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in gate.attribute}
        width = attrs["N"]
        if {a.name: helper.get_attribute_value(a) for a in up.attribute} != attrs:
            continue  # not the same shape and quantization: leave them apart
        stem = gate.name.replace("gate_proj", "gate_up_proj").rsplit("/", 1)[0]
        names = [gate_weight.replace("gate_proj", "gate_up_proj"), gate.input[2].replace("gate_proj", "gate_up_proj")]
        for name, index in zip(names, (1, 2)):
            parts = [numpy_helper.to_array(initializers[n.input[index]]) for n in (gate, up)]
            graph.initializer.append(numpy_helper.from_array(np.concatenate(parts), name))
            for n in (gate, up):
                graph.initializer.remove(initializers[n.input[index]])
        fused_out = f"{stem}/MatMul/output_0"
        fused = helper.make_node(
            "MatMulNBits", [gate.input[0], *names], [fused_out], name=f"{stem}/MatMul_Q4", domain=gate.domain,
            **{**attrs, "N": 2 * width},
        )
        split_sizes = numpy_helper.from_array(np.array([width, width], dtype=np.int64), f"{stem}/split_sizes")
        graph.initializer.append(split_sizes)
        split = helper.make_node("Split", [fused_out, split_sizes.name], [gate.output[0], up.output[0]],
                                 name=f"{stem}/Split", axis=-1)
        position = list(graph.node).index(gate)
        graph.node.remove(gate)
        graph.node.remove(up)
        graph.node.insert(position, fused)
        graph.node.insert(position + 1, split)


def _int4_blocks(weight):
    """`[N, K]` float → packed codes `[N, K/32, 16]` uint8 (low nibble first), scales `[N, K/32]`,
    and each block's offset `[N, K/32]` (min + 8 * scale): w = (q - 8) * scale + offset."""
    import numpy as np

    rows, width = weight.shape
    blocks = weight.reshape(rows, width // BLOCK, BLOCK)
    low, high = blocks.min(axis=-1), blocks.max(axis=-1)
    scales = ((high - low) / 15).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    codes = np.clip(np.rint((blocks - low[..., None]) / safe[..., None]), 0, 15).astype(np.uint8)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return packed, safe, (low + 8 * safe).astype(np.float32)


def _int8_blocks(weight):
    """`[N, K]` float → 8-bit codes `[N, K/32, 32]` (zero point 128) and absmax / 127 scales."""
    import numpy as np

    rows, width = weight.shape
    blocks = weight.reshape(rows, width // BLOCK, BLOCK)
    scales = (np.abs(blocks).max(axis=-1) / 127).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    codes = np.clip(np.rint(blocks / safe[..., None]), -127, 127).astype(np.int16) + 128
    return codes.astype(np.uint8), safe


def _input_width(graph, name: str) -> int:
    """The hidden size feeding the head, from `inputs_embeds`' last dimension (the residual width)."""
    embeds = next(i for i in graph.input if i.name == "inputs_embeds")
    width = embeds.type.tensor_type.shape.dim[-1].dim_value
    if width <= 0:
        raise RuntimeError(f"cannot tell the hidden size feeding {name}")
    return width


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"
