"""Weight-only int8 and bfloat16 layers: the weights shrink, the activations stay float32. And the same layout in
float32, for batched decoding on the CPU.

A one-token decode step reads every weight once, so on the CPU its speed is the weights' size over the memory
bandwidth: int8 reads a quarter of float32's bytes, bfloat16 half. Only the weights change; LayerNorms, biases and the
position embedding stay float32, and every product accumulates in float32 (`csrc/quant/packed.h`).

- int8: symmetric, per output channel: `w ≈ q · s` with `q` in [-127, 127] and `s = max|w_row| / 127`. The token
  embedding is quantised by its rows, which are also the tied output head's output channels, so one scale per token
  serves both.
- bfloat16: the float32 weight rounded to bfloat16, no scale.
- float32 (`pack_model`, not a quantisation: no rounding): the server's batched decode steps multiply a few rows by
  every weight, where torch's GEMM packs the weight anew on each call; the packed layout's kernels do not, and the
  head's `argmax` finds a greedy row's next token without writing its 50257 logits.

`QuantLinear` and `QuantEmbedding` hold the weight packed in blocks of 64 output channels (the layout the C++ kernels
stream through, `gpt2tui._quant`); `linear` and `embedding` run them, through the native kernels on the CPU and through
their PyTorch twins (`linear_reference`, `embedding_reference`) elsewhere or where the extension did not build. Saved
checkpoints hold the plain `(out, in)` weight and `weight_scale` beside it (`state_dict`), never the packed layout.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError

try:
    from . import _quant as native
except ImportError:  # not built (a source checkout without a compiler): the PyTorch twins run instead
    native = None

KINDS = ("int8", "bfloat16")  # the quantisations a user picks (`--quantize`)
FLOAT = "float32"  # the packed layout without rounding (`pack_model`)
PACKINGS = (*KINDS, FLOAT)  # every kind of packed weight the kernels read
BLOCK = 64  # output channels per packed block (csrc/quant/packed.h)
QUANTIZE_ROWS = 32 * 64  # rows per slice while quantising: whole blocks
ENV_VAR = "GPT2TUI_QUANT_KERNEL"  # "native" (default where built) or "reference"
_NATIVE_TYPE = {"int8": 0, "bfloat16": 1, FLOAT: 2}  # packed.h's WeightType
# How each kind's values are stored: as integers, so that `model.float()` or `model.to(dtype)` never converts them.
_STORAGE = {"int8": torch.int8, "bfloat16": torch.int16, FLOAT: torch.int32}
_VALUES = {torch.int16: torch.bfloat16, torch.int32: torch.float32}  # stored bits back to numbers
_KIND_OF_VALUES = {torch.int8: "int8", torch.bfloat16: "bfloat16", torch.float32: FLOAT}


class QuantizationError(ConfigError):
    """A quantisation that cannot be done or used (an unknown kind, training a quantised model)."""


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise QuantizationError(f"unknown quantization {kind!r}; choose one of: {', '.join(KINDS)}")
    return kind


# -- quantising and packing ------------------------------------------------------------------------------------------


def _quantized_slices(weight: torch.Tensor, kind: str):
    """`(first row, values, scale)` for slices of a float weight's rows. In slices, the float temporaries stay a few
    MB even for the 50257-row token embedding, so a quantising load holds little more than the packed model."""
    if kind != FLOAT:
        check_kind(kind)
    weight = weight.detach()
    for r in range(0, weight.shape[0], QUANTIZE_ROWS):
        w = weight[r : r + QUANTIZE_ROWS].float()  # (n, K)
        if not torch.isfinite(w).all():  # checked here, slice by slice, so a loader need not read the tensor twice
            raise QuantizationError("the weight holds NaN or infinite values")
        if kind in ("bfloat16", FLOAT):
            yield r, w.to(torch.bfloat16) if kind == "bfloat16" else w, torch.ones(w.shape[0], device=w.device)
            continue
        s = w.abs().amax(dim=1) / 127.0  # (n,)
        s = torch.where(s > 0, s, torch.ones_like(s))  # an all-zero row: any scale gives zeros
        yield r, torch.round(w / s[:, None]).clamp_(-127, 127).to(torch.int8), s


def quantize_weight(weight: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`(values, scale)` of a float weight `(N, K)`: int8 values with one float32 scale per row, or bfloat16 values
    with a scale of ones. `values · scale[:, None]` is the weight the layer computes with."""
    parts = list(_quantized_slices(weight, kind))
    return torch.cat([v for _, v, _ in parts]), torch.cat([s for _, _, s in parts])


def quantize_packed(weight: torch.Tensor, kind: str, done=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(packed, padded scale)` of a float weight, quantised slice by slice straight into the packed layout (no
    `(N, K)` copy); `done(first, end)` is told each slice of rows that has been read, so a loader can drop it."""
    N, K = weight.shape
    NB = -(-N // BLOCK)
    packed = torch.zeros(NB, K, BLOCK, dtype=_STORAGE[kind], device=weight.device)
    scale = torch.zeros(NB * BLOCK, device=weight.device)
    for r, values, s in _quantized_slices(weight, kind):
        scale[r : r + values.shape[0]] = s
        _fill(packed, r, values.view(packed.dtype))
        if done is not None:
            done(r, r + values.shape[0])
    return packed, scale


def _fill(packed: torch.Tensor, first: int, values: torch.Tensor) -> None:
    """Write rows [first, first + n) of a weight, `first` on a block boundary, into its packed layout."""
    n, K = values.shape
    if n % BLOCK:  # the last block's missing rows are zeros
        values = torch.cat([values, values.new_zeros(BLOCK - n % BLOCK, K)])
    b = first // BLOCK
    packed[b : b + values.shape[0] // BLOCK] = values.view(-1, BLOCK, K).transpose(1, 2)


def pack(values: torch.Tensor, done=None) -> torch.Tensor:
    """`(N, K)` → `(NB, K, 64)`: blocks of 64 rows, each stored column by column; N padded with zero rows. Slice by
    slice, so no padded copy of the whole weight is made; `done(first, end)` is told each slice read."""
    N, K = values.shape
    packed = values.new_zeros(-(-N // BLOCK), K, BLOCK)
    for r in range(0, N, QUANTIZE_ROWS):
        _fill(packed, r, values[r : r + QUANTIZE_ROWS])
        if done is not None:
            done(r, min(N, r + QUANTIZE_ROWS))
    return packed


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of `pack`: `(NB, K, 64)` → `(n, K)`."""
    NB, K, _ = packed.shape
    return packed.transpose(1, 2).reshape(NB * BLOCK, K)[:n]


def _values(stored: torch.Tensor) -> torch.Tensor:
    """Stored values as numbers: int8 as is, bfloat16 and float32 from the int16 and int32 bits they are kept in."""
    return stored.view(_VALUES[stored.dtype]) if stored.dtype in _VALUES else stored


def _padded_scale(scale: torch.Tensor) -> torch.Tensor:
    """The scale padded to whole blocks with zeros, as the kernels read it."""
    out = scale.new_zeros(-(-scale.shape[0] // BLOCK) * BLOCK)
    out[: scale.shape[0]] = scale
    return out


# -- the ops -----------------------------------------------------------------------------------------------------------


def native_available(device: torch.device) -> bool:
    if native is None or device.type != "cpu":
        return False
    choice = os.environ.get(ENV_VAR, "native")
    if choice not in ("native", "reference"):
        raise QuantizationError(f"${ENV_VAR} is {choice!r}; set it to 'native' or 'reference', or unset it")
    return choice == "native"


def _sync_threads() -> None:
    # The pool follows torch's thread count, so `torch.set_num_threads` (and $OMP_NUM_THREADS) governs both, and the
    # two never run at once: each waits while the other computes.
    n = torch.get_num_threads()
    if native.get_num_threads() != n:
        native.set_num_threads(n)


def linear_reference(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                     n: int) -> torch.Tensor:
    """The PyTorch twin of `linear`: dequantise, then multiply, in x's dtype (float64 in tests)."""
    w = _values(unpack(packed, n)).to(x.dtype) * scale[:n, None].to(x.dtype)  # (N, K)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
           n: int) -> torch.Tensor:
    """`x (..., K) → (..., n)` float32 through a packed weight `(NB, K, 64)` with its padded scale `(NB·64,)`.

    Under `torch.compile` this is the custom op `torch.ops.gpt2tui.packed_linear`, which the compiler sees as one
    node (its fake implementation gives the shape); eagerly the same function runs without the dispatcher's cost."""
    if torch.compiler.is_compiling():
        return torch.ops.gpt2tui.packed_linear(x, packed, scale, bias, n)
    return _linear(x, packed, scale, bias, n)


def _linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
            n: int) -> torch.Tensor:
    if not (native_available(x.device) and _native_ok(packed, scale, bias)):
        return linear_reference(x if x.dtype == torch.float64 else x.float(), packed, scale, bias, n)
    *lead, K = x.shape
    if K != packed.shape[1]:  # the kernel would read past the weight: say so as F.linear would
        raise ValueError(f"input has {K} features, the packed weight takes {packed.shape[1]}")
    x2 = x.reshape(-1, K).float().contiguous()  # (M, K)
    y = torch.empty(x2.shape[0], n, dtype=torch.float32)  # (M, n)
    if x2.shape[0]:
        _sync_threads()
        native.linear(x2.data_ptr(), packed.data_ptr(), scale.data_ptr(), 0 if bias is None else bias.data_ptr(),
                      y.data_ptr(), x2.shape[0], n, K, _NATIVE_TYPE[_kind_of(packed)])
    return y.view(*lead, n)


def argmax_reference(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
    """The PyTorch twin of `argmax`: the whole product, then its argmax."""
    return linear_reference(x, packed, scale, None, n).argmax(-1)


def argmax(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
    """`x (..., K) → (...)` int64: the index of the largest of `linear(x, ...)`'s n outputs (the first of equal
    ones), found block by block in the kernel without writing the outputs: a greedy decode step's next tokens from
    the packed head. Where the native kernels do not run: the twin."""
    if not (native_available(x.device) and _native_ok(packed, scale, None)):
        return argmax_reference(x if x.dtype == torch.float64 else x.float(), packed, scale, n)
    *lead, K = x.shape
    if K != packed.shape[1]:
        raise ValueError(f"input has {K} features, the packed weight takes {packed.shape[1]}")
    x2 = x.reshape(-1, K).float().contiguous()  # (M, K)
    out = torch.empty(x2.shape[0], dtype=torch.int64)  # (M,)
    if x2.shape[0]:
        _sync_threads()
        native.argmax(x2.data_ptr(), packed.data_ptr(), scale.data_ptr(), 0, out.data_ptr(), x2.shape[0], n, K,
                      _NATIVE_TYPE[_kind_of(packed)])
    return out.view(*lead)


def embedding_reference(ids: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Rows `ids` of the packed weight, dequantised: block `id // 64`, lane `id % 64`."""
    rows = _values(packed[ids // BLOCK, :, ids % BLOCK])  # (..., K)
    return rows.to(scale.dtype) * scale[ids][..., None]


def embedding(ids: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
    """Rows `ids` `(...)` of a packed `(n, K)` weight, float32 `(..., K)`. On the CPU an id outside [0, n) is an
    IndexError, as nn.Embedding's (on a GPU the check would cost a sync per step, and indexing asserts there anyway).
    Under `torch.compile`: the custom op `torch.ops.gpt2tui.packed_embedding`."""
    if torch.compiler.is_compiling():
        return torch.ops.gpt2tui.packed_embedding(ids, packed, scale, n)
    return _embedding(ids, packed, scale, n)


def _embedding(ids: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
    if ids.device.type == "cpu" and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise IndexError(f"token id out of range: ids must be in [0, {n}), got {int(ids.min())}..{int(ids.max())}")
    if not (native_available(ids.device) and _native_ok(packed, scale, None)):
        return embedding_reference(ids, packed, scale)
    flat = ids.reshape(-1).to(torch.int64).contiguous()  # (n,)
    K = packed.shape[1]
    out = torch.empty(flat.shape[0], K, dtype=torch.float32)
    if flat.numel():
        native.gather(packed.data_ptr(), _NATIVE_TYPE[_kind_of(packed)], scale.data_ptr(), K, flat.data_ptr(),
                      flat.shape[0], out.data_ptr())
    return out.view(*ids.shape, K)


# The ops torch.compile sees. Their fake implementations say only what comes out (shape, dtype, device), so a compiled
# graph keeps each product whole and calls the kernels above at run time.
_linear_op = torch.library.custom_op(
    "gpt2tui::packed_linear", _linear, mutates_args=(),
    schema="(Tensor x, Tensor packed, Tensor scale, Tensor? bias, int n) -> Tensor",
)
_embedding_op = torch.library.custom_op(
    "gpt2tui::packed_embedding", _embedding, mutates_args=(), schema="(Tensor ids, Tensor packed, Tensor scale, int n) -> Tensor",
)


@_linear_op.register_fake
def _(x, packed, scale, bias, n):
    return x.new_empty(*x.shape[:-1], n, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


@_embedding_op.register_fake
def _(ids, packed, scale, n):
    return scale.new_empty(*ids.shape, packed.shape[1])


def _kind_of(packed: torch.Tensor) -> str:
    return next(kind for kind, dtype in _STORAGE.items() if dtype == packed.dtype)


def _native_ok(packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """The kernels read float32 scales and biases and the packed layout as stored: anything else (a model moved to
    float64 for a test) runs the twin."""
    return (scale.dtype == torch.float32 and packed.is_contiguous() and scale.is_contiguous()
            and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous())))


# -- the modules -------------------------------------------------------------------------------------------------------


class _Packed(nn.Module):
    """A packed weight with its scale: what QuantLinear and QuantEmbedding share, including their state dict, which
    holds the plain `(N, K)` values as `weight` and (for int8) `weight_scale`."""

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, n: int):
        super().__init__()
        self.n, self.k = n, packed.shape[1]
        self.register_buffer("packed", packed)  # (NB, K, 64)
        self.register_buffer("scale", scale)  # (NB·64,) float32, zeros past n

    @classmethod
    def from_values(cls, values: torch.Tensor, scale: torch.Tensor, *args, done=None):
        """From plain `(N, K)` values (int8, bfloat16 or float32) and their `(N,)` scale, as a checkpoint stores
        them; `done` as in `pack`."""
        stored = values.view(_STORAGE[_KIND_OF_VALUES[values.dtype]])  # int8 as is, floats as their bits
        return cls(pack(stored, done), _padded_scale(scale.float()), values.shape[0], *args)

    @property
    def kind(self) -> str:
        return _kind_of(self.packed)

    def values(self) -> torch.Tensor:
        """The stored `(N, K)` values: int8, bfloat16 or float32."""
        return _values(unpack(self.packed, self.n))

    def dequantized(self) -> torch.Tensor:
        """The float32 weight `(N, K)` this layer computes with."""
        return self.values().float() * self.scale[: self.n, None]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.values().contiguous()
        if self.kind == "int8":
            destination[prefix + "weight_scale"] = self.scale[: self.n].clone()
        for name, param in self._parameters.items():
            if param is not None:
                destination[prefix + name] = param if keep_vars else param.detach()

    def _load_from_state_dict(self, state_dict, prefix, *args):
        raise QuantizationError("a quantised layer is built from its tensors by gpt2tui.weights, not loaded in place")


class QuantLinear(_Packed):
    """`nn.Linear` with a packed int8 or bfloat16 weight and a float32 bias; float32 in, float32 out."""

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, n: int, bias: torch.Tensor | None = None):
        super().__init__(packed, scale, n)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    @property
    def in_features(self) -> int:
        return self.k

    @property
    def out_features(self) -> int:
        return self.n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.packed, self.scale, self.bias, self.n)

    def extra_repr(self) -> str:
        return f"in_features={self.k}, out_features={self.n}, bias={self.bias is not None}, kind={self.kind}"


class QuantEmbedding(_Packed):
    """The tied token embedding, packed: `forward` looks rows up, `logits` is the output head over the same rows."""

    @property
    def num_embeddings(self) -> int:
        return self.n

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return embedding(ids, self.packed, self.scale, self.n)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return linear(h, self.packed, self.scale, None, self.n)

    def argmax(self, h: torch.Tensor) -> torch.Tensor:
        """`logits(h).argmax(-1)` without the logits."""
        return argmax(h, self.packed, self.scale, self.n)

    def extra_repr(self) -> str:
        return f"{self.n}, {self.k}, kind={self.kind}"


# -- whole models ------------------------------------------------------------------------------------------------------

LINEAR_NAMES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
EMBEDDING_NAME = "transformer.wte"


def quantized_modules(model: nn.Module) -> list[str]:
    """Names of the modules a quantised model packs: every block's four projections and the token embedding."""
    blocks = [f"transformer.h.{i}.{name}" for i in range(len(model.transformer.h)) for name in LINEAR_NAMES]
    return [*blocks, EMBEDDING_NAME]


def packing_of(model: nn.Module) -> str | None:
    """The kind a model's weights are packed in (int8, bfloat16 or float32), or None for a plain model."""
    wte = model.transformer.wte
    return wte.kind if isinstance(wte, QuantEmbedding) else None


def quantization_of(model: nn.Module) -> str | None:
    """The quantisation of a model's weights (int8 or bfloat16), or None for float weights, packed or not."""
    kind = packing_of(model)
    return kind if kind in KINDS else None


def packed_layer(name: str, values: torch.Tensor, scale: torch.Tensor, done=None) -> _Packed:
    """The packed form of module `name` from stored values and scales (the token embedding, or a projection whose
    bias `install` adds); `done` as in `pack`."""
    return (QuantEmbedding if name == EMBEDDING_NAME else QuantLinear).from_values(values, scale, done=done)


def quantized_layer(name: str, weight: torch.Tensor, kind: str, done=None) -> _Packed:
    """The packed form of module `name` from its float weight (`quantize_packed`)."""
    packed, scale = quantize_packed(weight, kind, done)
    return (QuantEmbedding if name == EMBEDDING_NAME else QuantLinear)(packed, scale, weight.shape[0])


def install(model: nn.Module, layers: dict[str, _Packed]) -> nn.Module:
    """Put packed layers in place of the named modules, each projection keeping the float bias of the module it
    replaces: the loader builds each layer as it reads its tensor, so the whole float model is never in memory."""
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old_bias = getattr(getattr(parent, child), "bias", None)
        if isinstance(layer, QuantLinear) and layer.bias is None and old_bias is not None:
            layer.bias = nn.Parameter(old_bias.detach().float(), requires_grad=False)
        setattr(parent, child, layer)
    return model


def quantize_model(model: nn.Module, kind: str) -> nn.Module:
    """Pack a float model's weights in place (`kind`: int8 or bfloat16); everything else becomes float32."""
    check_kind(kind)
    return _pack_model(model, kind)


def pack_model(model: nn.Module) -> nn.Module:
    """Pack a float32 model's weights in place in the float32 layout (no rounding), for batched decoding on the
    CPU: the same numbers, multiplied by the packed kernels. It saves as the plain float model it was."""
    if model.dtype != torch.float32:
        raise QuantizationError(f"pack_model takes a float32 model, not {str(model.dtype).removeprefix('torch.')}")
    return _pack_model(model, FLOAT)


def _pack_model(model: nn.Module, kind: str) -> nn.Module:
    now = packing_of(model)
    if now is not None:
        raise QuantizationError(f"this model is already {f'quantised ({now})' if now in KINDS else 'packed'}")
    for name in quantized_modules(model):  # one at a time: the float weight goes as its packed form comes
        install(model, {name: quantized_layer(name, model.get_submodule(name).weight, kind)})
    return model.float().eval()


def refuse_training(model: nn.Module, what: str) -> None:
    """Training needs float weights to take gradient steps on; say so instead of failing deep inside autograd."""
    kind = packing_of(model)
    if kind == FLOAT:
        raise QuantizationError(f"{what} needs trainable weights, and this model's are packed for inference "
                                "(pack_model): train the model as loaded, then pack it")
    if kind is not None:
        raise QuantizationError(f"{what} needs float weights, and this model's are quantised to {kind}: rounding "
                                "makes them untrainable. Train the float model, then quantise the result")
