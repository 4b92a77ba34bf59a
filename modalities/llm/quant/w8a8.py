"""W8A8 on CPU: int8 weights times per-token int8 activations (one or two int8 parts), through FBGEMM.

int4 weight-only (the tinygemm CPU kernel) re-dequantizes its weights for every activation row: a
1536 x 576 layer takes 49 us at one row, 168 us at eight and 5.3 ms at 256. FBGEMM's int8 GEMM
(`quantized::linear_dynamic`, VNNI on this machine) multiplies integers: 27 us, 55 us and 1.3 ms. So
W8A8 prefills (long multimodal prompts) much faster than int4; for decoding, the per-token
scaling around each GEMM costs what the kernel saves (one stream: slower than int4; eight: about
the same), and int4 stays closer to float32 (see README "Benchmarks").

- **Weights:** int8, one symmetric scale per output channel, packed once by FBGEMM.
- **Activations, per token, in one or two int8 parts:** FBGEMM picks one quantization range for the
  whole input matrix, so a row's rounding would depend on the other rows in its batch. Each row is
  scaled to its own absmax instead and rounded to integers (the first part); a constant pin row
  makes FBGEMM's range the same every call, so it takes those integers exactly and a token's
  result does not depend on its batch. The rounding residual, stretched onto the same grid, is a
  second part (more rows in the same GEMM): with it the activations carry ~16 bits, without it 8.
  Layers that share an input (q/k/v, gate/up) take both parts and run as one GEMM over their
  stacked weights (`Int8Group`); o_proj, down_proj and the head take one part
  (`SINGLE_PART_LINEARS` has the measurements).
- **SmoothQuant:** one-part per-token int8 alone lost 10 points of greedy agreement with float32
  (smoothing won back ~4, the second part the rest). Much of it came from a few activation
  channels far larger than the rest. Before quantizing, each input
  channel k of a linear is divided by s_k = max|x_k|^a / max|W_k|^(1-a), with a = 0.5. The same s_k
  multiplies the weight's column k, so the product is unchanged. The division is folded into the
  op before it, so it costs nothing at run time: the RMSNorm gain for q/k/v and gate/up, up_proj's
  rows for down_proj. o_proj is left unsmoothed: its input channels come from shared (GQA) value
  heads. max|x_k| comes from a calibration pass over `CALIBRATION_CONVERSATIONS` at load (float32;
  with the packing, loading SmolLM2 as w8a8 takes ~6.5 s, float32 2-3 s).
- **Embedding and head:** the embedding is stored as int8 in blocks of 32 with a float32 scale per
  block (`Int8BlockEmbedding`). SmolLM2's packaged GGUF holds it as Q8_0, int8 in blocks of 32 with
  one scale each, so this storage reproduces the float32 table exactly. The tied head
  (`Int8Head`) multiplies by a per-row int8 copy through FBGEMM, then recomputes each row's 64
  highest logits in float32 from the exact table rows, so near-ties at the top are float32's.

Numbers on this project's 2-core CPU machines, SmolLM2-135M; `chorus bench` measures them.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

EMBEDDING_BLOCK = 32  # int8 block size of the embedding table (GGUF Q8_0's)
SMOOTHING_ALPHA = 0.5  # SmoothQuant's migration strength; 0.5 measured best of 0.5 / 0.7 / 0.85
WEIGHT_LEVELS = 127  # symmetric int8 weights: [-127, 127]
RANGE_FLOOR = 1e-5  # calibration / weight ranges below this are treated as this (no divide-by-zero)
ROW_FLOOR = 1e-30  # an all-zero activation row is divided by this instead of 0
SHRINK = 1 - 2.0**-8  # keeps scaled rows strictly inside the pinned range (no clamping at its edge)
PROBE_ROWS = 2
# Linears that read an input alone take it as one int8 part: the residual split would serve one GEMM
# only. Those sharing an input (q/k/v, gate/up) take two. Measured on SmolLM2, 64 tokens, 1 thread:
# greedy agreement 97.4 % this way, 97.0 % with two parts everywhere, 93.5 % with one everywhere;
# 8 streams 134, 119 and 148 tok/s (int4: 132).
SINGLE_PART_LINEARS = ("self_attn.o_proj", "mlp.down_proj")
REFINED_TOP = 64  # logits per row the head recomputes in float32

# Calibration text for SmoothQuant's activation ranges: generic assistant conversations in the
# register Chorus serves (not the bench's agreement prompts, which measure the result).
CALIBRATION_CONVERSATIONS: tuple[tuple[str, str], ...] = (
    ("Hi, I ordered a blue jacket last week and it still hasn't arrived. Can you check the status?",
     "I'm sorry for the delay. Could you share your order number? I'll look up the shipment and tell you "
     "when it should arrive."),
    ("How do I reset my password if I no longer have access to my email?",
     "You can verify your identity with your phone number instead. Open the login page, choose "
     "\"Forgot password\", then \"Use phone\", and follow the code we text you."),
    ("What's the difference between a virus and a bacterium?",
     "Bacteria are single-celled living organisms that can reproduce on their own; viruses are much "
     "smaller and can only multiply inside the cells of a host."),
    ("Translate \"Where is the train station?\" into German and Italian.",
     "German: \"Wo ist der Bahnhof?\" Italian: \"Dov'è la stazione?\""),
    ("Give me a quick recipe for pancakes.",
     "Whisk 1 cup of flour, 1 tablespoon of sugar, 2 teaspoons of baking powder and a pinch of salt. "
     "Add 1 cup of milk, 1 egg and 2 tablespoons of melted butter, then cook on a hot pan."),
    ("Can you write a haiku about autumn rain?",
     "Cold rain on the leaves / the maple lets go of red / puddles hold the sky"),
)


class UnavailableW8A8(RuntimeError):
    """W8A8 can't run here (no FBGEMM, not a CPU tensor, not float32)."""


@functools.cache
def _has_vnni() -> bool:
    """Whether the CPU multiplies u8 x s8 without 16-bit saturation (AVX512-VNNI / AVX-VNNI / AMX).
    Without it FBGEMM's kernels can saturate on full 8-bit activations, so activations get 7 bits."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def activation_levels() -> int:
    """Quantization steps FBGEMM uses for an activation range here (255, or 127 with reduce_range)."""
    return 255 if _has_vnni() else 127


def check_available(device: torch.device, dtype: torch.dtype) -> None:
    if device.type != "cpu":
        raise UnavailableW8A8(f"w8a8 runs on CPU through FBGEMM, not on {device.type}; use int4 there")
    if dtype != torch.float32:
        raise UnavailableW8A8(f"w8a8 takes float32 activations; this model runs in {dtype}")
    engines = torch.backends.quantized.supported_engines
    if not {"fbgemm", "x86"} & set(engines) or torch.backends.quantized.engine not in ("fbgemm", "x86"):
        raise UnavailableW8A8(
            f"w8a8 needs torch's FBGEMM quantized engine (supported: {engines}, "
            f"active: {torch.backends.quantized.engine})"
        )


def _per_row_int8(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-row int8 of a float weight, as the qint8 tensor FBGEMM packs."""
    weight = weight.detach().float()
    scales = (weight.abs().amax(dim=1) / WEIGHT_LEVELS).clamp_min(RANGE_FLOOR / WEIGHT_LEVELS)
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch marks its quantized-tensor constructors deprecated in favour of torchao, whose x86
        # int8 GEMM only runs under torch.compile; FBGEMM's packed op still needs this one input.
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor, torch.quantize_per_channel.*")
        return torch.quantize_per_channel(weight, scales.double(), zero_points, 0, torch.qint8)


class Int8Activations(NamedTuple):
    """Activation rows ready for FBGEMM (see `quantize_activations`)."""

    rows: torch.Tensor  # [2M + 1, K]: M rows of integers, M of stretched residuals, the pin row (no residuals: [M + 1, K])
    back: torch.Tensor  # [M, 1]: multiplies an output row back to the input's scale
    count: int  # M
    residual: bool


def quantize_activations(x: torch.Tensor, pin: torch.Tensor, residual: bool = True) -> Int8Activations:
    """Split float rows `x` `[M, K]` into two int8-exact parts per row for FBGEMM (see module doc).

    Row i is scaled so its absmax sits just inside `HALF` (`t = x * HALF * SHRINK / absmax`) and
    rounded (`coarse`, integers that FBGEMM's int8 grid holds exactly). The rounding residual
    (|.| <= 0.5) is stretched by `LEVELS * SHRINK` onto the same grid (`fine`). The pin row (+HALF,
    -HALF) makes FBGEMM's range [-HALF, HALF] whatever the rows hold: scale 1, every row quantized
    on its own, so a row's result doesn't depend on its batch.
    """
    levels = activation_levels()
    # abs().amax(): the same value as an inf-norm, but vectorised (vector_norm(inf) over the last dim
    # was 14x slower on 336 x 576 rows, 3x on 8).
    absmax = x.abs().amax(-1, keepdim=True).clamp_min_(ROW_FLOOR)
    to_steps = absmax.reciprocal().mul_(levels / 2 * SHRINK)
    t = x * to_steps
    coarse = t.round()
    parts = [coarse, (t - coarse).mul_(levels * SHRINK), pin] if residual else [coarse, pin]
    return Int8Activations(torch.cat(parts), to_steps.reciprocal_(), x.shape[0], residual)


class Int8Linear(nn.Module):
    """`y = x W^T + b` with W in FBGEMM's packed int8 and x entering as two int8 parts per token
    (see module doc)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.out_features, self.in_features = weight.shape
        if self.in_features < 2:
            raise UnavailableW8A8("w8a8 needs at least 2 input features (the pin row holds +HALF and -HALF)")
        quantized = _per_row_int8(weight)
        # The bias is added after the row scale comes back (packed, FBGEMM would add it to the scaled rows).
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._packed = torch.ops.quantized.linear_prepack(quantized, None)
        levels = activation_levels()
        pin = torch.zeros(1, self.in_features)
        pin[0, 0], pin[0, 1] = levels / 2, -levels / 2
        self.register_buffer("pin", pin, persistent=False)
        # What FBGEMM holds: the int8 matrix plus, per output channel, a scale, a zero point and a
        # column offset. Its blocked layout pads to its tiles on top: the process grew ~15 % more
        # than this per 1536 x 576 layer when measured with RSS, which this count leaves out.
        self.packed_bytes = self.out_features * (self.in_features + 12)
        self.reduce_range = levels < 255
        self.fine_weight = 1.0 / (levels * SHRINK)  # a `fine` output row's weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = quantize_activations(x.reshape(-1, self.in_features), self.pin, self.residual)
        return self.apply_to(acts).view(*x.shape[:-1], self.out_features)

    def apply_to(self, acts: Int8Activations) -> torch.Tensor:
        """`[M, N]` outputs for activations already split by `quantize_activations` (layers that read
        the same input share one split)."""
        out = torch.ops.quantized.linear_dynamic(acts.rows, self._packed, self.reduce_range)
        m = acts.count
        if acts.residual:
            y = torch.add(out[:m], out[m : 2 * m], alpha=self.fine_weight).mul_(acts.back)
        else:
            y = out[:m].mul(acts.back)
        return y if self.bias is None else y.add_(self.bias)

    def extra_repr(self) -> str:
        parts = "two int8 parts" if self.residual else "one int8 part"
        return f"in_features={self.in_features}, out_features={self.out_features}, FBGEMM int8 x {parts}"


def shared_input(layers: Sequence[Int8Linear]) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """One callable for `Int8Linear`s that read the same input (q/k/v; gate/up): the split into
    int8 parts happens once, not once per layer."""
    pin, width, residual = layers[0].pin, layers[0].in_features, layers[0].residual
    if any(layer.in_features != width or layer.residual != residual for layer in layers):
        raise ValueError("layers sharing an input must have the same in_features and residual setting")

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        acts = quantize_activations(x.reshape(-1, width), pin, residual)
        return tuple(layer.apply_to(acts).view(*x.shape[:-1], layer.out_features) for layer in layers)

    return run


class Int8Group(nn.Module):
    """Linears that read the same input (q/k/v; gate/up) as one `Int8Linear` over their stacked
    weights: one split of the input, one GEMM and one rescale instead of one per layer.

    Weights are quantized per output row, so stacking them changes no integer and no scale: each
    layer's output is, bit for bit, what it would be alone. `forward` returns the layers' outputs
    (views into one tensor). The layers themselves become `Int8Part`s; code that calls them one by
    one on the same input tensor (transformers' own forward) gets the group computed once (the
    outputs are held until every part has taken its own; a different input recomputes).
    Measured on SmolLM2 (1 thread): a q/k/v group at 1 row 97 us vs 146 us as three layers, a
    gate/up group 118 vs 157 us.
    """

    def __init__(self, layers: Sequence[nn.Linear], residual: bool = True) -> None:
        super().__init__()
        weights = [layer.weight.detach() for layer in layers]
        if len({w.shape[1] for w in weights}) != 1:
            raise ValueError("layers sharing an input must have the same in_features")
        biases = None
        if any(layer.bias is not None for layer in layers):
            biases = torch.cat([
                torch.zeros(w.shape[0]) if layer.bias is None else layer.bias.detach().float()
                for layer, w in zip(layers, weights)
            ])
        self.linear = Int8Linear(torch.cat(weights), biases, residual=residual)
        self.sizes = tuple(w.shape[0] for w in weights)
        self._held: list | None = None  # [input, outputs, parts still to take them]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(x).split(self.sizes, dim=-1)

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        held = self._held
        if held is None or held[0] is not x:
            held = [x, self.forward(x), len(self.sizes)]
            self._held = held
        held[2] -= 1
        if held[2] <= 0 and self._held is held:
            self._held = None  # every part has had its output: don't keep the activations alive
        return held[1][index]


class Int8Part(nn.Module):
    """One layer of an `Int8Group`, standing where the original linear stood."""

    def __init__(self, group: Int8Group, index: int) -> None:
        super().__init__()
        self.group, self.index = group, index
        self.in_features, self.out_features = group.linear.in_features, group.sizes[index]

    @property
    def residual(self) -> bool:
        return self.group.linear.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.part(x, self.index)

    def extra_repr(self) -> str:
        return f"part {self.index} of {len(self.group.sizes)} in a fused group, out_features={self.out_features}"


# Llama's linears that read one input, fused into an `Int8Group` each: (parent, children).
FUSED_GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))


def fuse_groups(model: nn.Module, linears: dict[str, nn.Module]) -> list[str]:
    """Replace each complete `FUSED_GROUPS` set among `linears` (name -> nn.Linear) by `Int8Part`s
    of one two-part `Int8Group`; returns the names replaced."""
    done: list[str] = []
    for name, module in list(model.named_modules()):
        for parent, children in FUSED_GROUPS:
            if not (name == parent or name.endswith("." + parent)):
                continue
            names = [f"{name}.{child}" for child in children]
            if not all(n in linears for n in names):
                continue
            group = Int8Group([linears[n] for n in names], residual=True)
            for index, child in enumerate(children):
                setattr(module, child, Int8Part(group, index))
            done.extend(names)
    return done


class Int8BlockEmbedding(nn.Module):
    """An embedding table stored as int8 in blocks of `EMBEDDING_BLOCK` with a float32 scale each;
    looked-up rows come back as float32. Exact for tables that were int8 blocks already (GGUF Q8_0):
    the block's absmax is then 127 steps, so its scale and every value are recovered."""

    def __init__(self, weight: torch.Tensor | None = None, *, parts: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """From a float table, or from `parts`: (qweight, scales) as `quantize_rows` returns them for
        every row (a table read and quantized a slice at a time never exists whole in float)."""
        super().__init__()
        if (weight is None) == (parts is None):
            raise ValueError("pass a float weight or its quantized parts")
        qweight, scales = parts if parts is not None else self.quantize_rows(weight)
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)

    @staticmethod
    def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `[N, D]` → int8 `[N, D]` and float32 scales `[N, D / block]`."""
        rows, width = weight.shape
        block = EMBEDDING_BLOCK if width % EMBEDDING_BLOCK == 0 else width
        blocks = weight.detach().float().view(rows, -1, block)
        scales = (blocks.abs().amax(dim=-1, keepdim=True) / WEIGHT_LEVELS).clamp_min(RANGE_FLOOR / WEIGHT_LEVELS)
        return (blocks / scales).round().to(torch.int8).view(rows, -1), scales.squeeze(-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.qweight[ids].view(*ids.shape, self.scales.shape[-1], -1).float()
        return (rows * self.scales[ids].unsqueeze(-1)).view(*ids.shape, self.embedding_dim)

    def dequantized(self) -> torch.Tensor:
        return self(torch.arange(self.num_embeddings, device=self.qweight.device))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 blocks of {self.qweight.shape[1] // self.scales.shape[1]}"


class Int8Head(nn.Module):
    """Output head: FBGEMM int8 logits, then the `REFINED_TOP` highest of each row recomputed in
    float32 from the exact table rows. The greedy token is float32's whenever float32's top logit
    is among int8's top `REFINED_TOP` (a worst-case error bound would admit most of the vocabulary;
    the typical int8 error is a small fraction of the spread of the top few dozen logits). On
    SmolLM2, decoding the bench's prompts, the recomputation changed the argmax in ~2 % of rows.
    """

    def __init__(self, table: Int8BlockEmbedding) -> None:
        super().__init__()
        self.table = table
        self.linear = Int8Linear(table.dequantized(), residual=False)  # its top is recomputed anyway
        self.in_features, self.out_features = table.embedding_dim, table.num_embeddings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        flat, inputs = logits.view(-1, self.out_features), x.reshape(-1, self.in_features).float()
        top = flat.topk(min(REFINED_TOP, self.out_features), dim=-1, sorted=False).indices  # [rows, k]
        flat.scatter_(1, top, torch.einsum("rk,rck->rc", inputs, self.table(top)))
        return logits

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, top {REFINED_TOP} in float32"


def calibration_ids(tokenizer) -> list[list[int]]:
    """Token ids of `CALIBRATION_CONVERSATIONS` in the tokenizer's chat format (plain text without one)."""
    out = []
    for user, assistant in CALIBRATION_CONVERSATIONS:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            out.append(tokenizer.encode(text, add_special_tokens=False))
        else:
            out.append(tokenizer.encode(f"{user}\n{assistant}"))
    return out


@torch.no_grad()
def input_ranges(model: nn.Module, modules: Sequence[nn.Module], calibration: Sequence[Sequence[int]]) -> dict[int, torch.Tensor]:
    """Per-input-channel max |x| that each module sees over the calibration sequences (by id(module))."""
    ranges: dict[int, torch.Tensor] = {}

    def record(module: nn.Module, args) -> None:
        seen = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()
        key = id(module)
        ranges[key] = torch.maximum(ranges[key], seen) if key in ranges else seen

    handles = [m.register_forward_pre_hook(record) for m in modules]
    device = next(model.parameters()).device
    try:
        for ids in calibration:
            model(input_ids=torch.tensor([list(ids)], dtype=torch.long, device=device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


@torch.no_grad()
def _smooth(x_range: torch.Tensor, consumers: Sequence[nn.Linear]) -> torch.Tensor:
    """SmoothQuant's factors for input channels feeding `consumers`; their weight columns are scaled."""
    w_range = torch.stack([m.weight.detach().abs().amax(dim=0) for m in consumers]).amax(dim=0).float()
    factors = x_range.clamp_min(RANGE_FLOOR).pow(SMOOTHING_ALPHA) / w_range.clamp_min(RANGE_FLOOR).pow(1 - SMOOTHING_ALPHA)
    for module in consumers:
        module.weight.mul_(factors.to(module.weight.dtype))
    return factors


@torch.no_grad()
def smooth_llama_layers(model: nn.Module, ranges: dict[int, torch.Tensor]) -> list[str]:
    """Fold SmoothQuant factors into a Llama-layout model (see module doc); returns the smoothed
    linears' names, [] if the layout isn't Llama's."""
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    parts = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")
    if layers is None or not all(all(hasattr(layer, p) for p in parts) for layer in layers):
        return []
    smoothed = []
    for index, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        layer.input_layernorm.weight.div_(_smooth(ranges[id(qkv[0])], qkv))
        gate_up = [mlp.gate_proj, mlp.up_proj]
        layer.post_attention_layernorm.weight.div_(_smooth(ranges[id(gate_up[0])], gate_up))
        factors = _smooth(ranges[id(mlp.down_proj)], [mlp.down_proj])
        mlp.up_proj.weight.div_(factors.unsqueeze(1))  # down's input is act(gate) * up, linear in up's rows
        prefix = f"model.layers.{index}"
        smoothed += [f"{prefix}.self_attn.{n}_proj" for n in "qkv"] + [f"{prefix}.mlp.{n}_proj" for n in ("gate", "up", "down")]
    return smoothed
