"""Loading and saving weights.

Two directory formats load into `GPT2`:

- Hugging Face GPT-2 (`config.json` with `"model_type": "gpt2"`, plus `model.safetensors`, its sharded form, or
  `pytorch_model.bin`). HF stores attention and MLP weights in `Conv1D` layout `(in, out)`; we transpose them into
  `nn.Linear`'s `(out, in)`. The official files also carry causal-mask buffers (`attn.bias`, `attn.masked_bias`),
  which are not weights, and sometimes a copy of the tied `lm_head.weight`.
- Our own checkpoint (`config.json` with `GPT2Config` fields and `chat_template`, plus `model.safetensors`).

Our checkpoints may also be quantised (`"quantization": "int8"` or `"bfloat16"` in config.json, format_version 2):
each packed layer's `weight` holds its int8 (or bfloat16) values in `(out, in)` layout and, for int8, `weight_scale`
its per-channel scales (`quant.py`). Loading a float model with `quantize=` packs it tensor by tensor as the file is
read, so the whole float model is never in memory.

Turning a name into a directory and reading config.json, without torch, is `model_files.py`'s; its names are
re-exported here.

Nothing arbitrary is unpickled: safetensors, or `torch.load(weights_only=True)`. Every tensor is read and checked
before the model is built, so a bad file gives one clear error and never a half-loaded model.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from . import quant
from .atomic import MODEL_DIR_FILES, atomic_directory
from .config import GPT2Config
from .errors import CheckpointError, ConfigError, ModelNotFoundError
from .model import GPT2

# Finding models and reading their configs needs no torch: it lives in model_files, and is re-exported here, where
# callers have always found it.
from .model_files import ADAPTER_FORMAT as ADAPTER_FORMAT
from .model_files import FORMAT as FORMAT
from .model_files import FORMAT_VERSION as FORMAT_VERSION
from .model_files import (
    GET_WEIGHTS_HINT,
    _is_adapter,
    _our_config,
    _read_json,
    adapter_base,
    adapter_meta,
    config_from_hf,
    resolve,
)
from .model_files import HF_FILES as HF_FILES
from .model_files import OFFICIAL as OFFICIAL
from .model_files import cached_official as cached_official
from .model_files import data_dir as data_dir
from .model_files import download as download
from .model_files import hf_cache_dir as hf_cache_dir
from .model_files import hf_offline as hf_offline
from .model_files import local_models as local_models
from .model_files import models_dir as models_dir
from .model_files import pending_download as pending_download
from .model_files import read_config as read_config
from .model_files import read_quantization as read_quantization

_HF_TRANSPOSED = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
_HF_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


# safetensors' dtype names → torch's, for reading a file's header alone (`shapes_only`). The weights may be stored in
# these; any other (an fp8 type, an integer) is refused with the tensor's name, as the loaded tensor would be.
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
WEIGHT_DTYPES = tuple(_SAFETENSORS_DTYPES.values())
_READABLE_DTYPES = {**_SAFETENSORS_DTYPES, "I8": torch.int8}  # int8: a quantised checkpoint's values (checked in _build)


def _unsupported_dtype(path: Path, name: str, dtype: str) -> CheckpointError:
    return CheckpointError(f"{path}: tensor {name} is stored as {dtype}, which gpt2tui does not load (float32, "
                           "float16, bfloat16 or float64); convert the weights, or use another model")


def available_memory() -> int | None:
    """Bytes of memory a new allocation can have without swapping, where the system says (Linux's MemAvailable)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_fits_in_memory(nbytes: int, what: str) -> None:
    free = available_memory()
    if free is not None and nbytes > free:
        raise CheckpointError(f"{what} needs {nbytes / 2**30:.1f} GiB of memory and {free / 2**30:.1f} GiB are free; "
                              "close other programs, or use a smaller model")


class _MappedFile:
    """A safetensors file mapped read-only (after `safe_open` has checked its header). A tensor is a view of its pages,
    and `release` hands the pages back to the OS, so a quantising load that reads the model tensor by tensor never has
    more than one float tensor resident."""

    PAGE = mmap.PAGESIZE

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            self.header = json.loads(f.read(n))
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.data_start = 8 + n

    def view(self, key: str, dtype: torch.dtype, shape: torch.Size) -> torch.Tensor:
        begin, end = self.header[key]["data_offsets"]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        with warnings.catch_warnings():  # read-only memory: every caller copies what it keeps
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(self.map, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                    offset=self.data_start + begin)
        return flat.view(shape)

    def release(self, key: str, first: int = 0, end: int | None = None) -> None:
        """Drop the resident pages of bytes [first, end) of a tensor (all of it by default)."""
        begin, stop = self.header[key]["data_offsets"]
        begin, stop = begin + first, begin + (stop - begin if end is None else end)
        start = (self.data_start + begin) // self.PAGE * self.PAGE
        if stop > begin and hasattr(self.map, "madvise"):
            self.map.madvise(mmap.MADV_DONTNEED, start, self.data_start + stop - start)


class _LazyTensor:
    """A tensor of a mapped safetensors file, read only when `load()` is called: shape and dtype come from the
    header, `t()` is deferred, and `release()` drops its pages once it has been copied or quantised."""

    def __init__(self, file: _MappedFile, key: str, shape: tuple[int, ...], dtype: torch.dtype, transposed=False):
        self.file, self.key, self.shape, self.dtype = file, key, torch.Size(shape), dtype
        self.transposed = transposed

    def dim(self) -> int:
        return len(self.shape)

    def t(self) -> _LazyTensor:
        return _LazyTensor(self.file, self.key, tuple(self.shape)[::-1], self.dtype, not self.transposed)

    def load(self) -> torch.Tensor:
        """A read-only view: copy what is kept."""
        shape = self.shape[::-1] if self.transposed else self.shape
        tensor = self.file.view(self.key, self.dtype, torch.Size(shape))
        return tensor.t() if self.transposed else tensor

    def release(self) -> None:
        self.file.release(self.key)

    def release_rows(self, first: int, end: int) -> None:
        """Drop the pages of rows [first, end) once read: the token embedding need not be resident all at once."""
        if not self.transposed and self.dim() == 2:
            row = self.shape[1] * self.dtype.itemsize
            self.file.release(self.key, first * row, end * row)


def _read_safetensors(path: Path, shapes_only: bool = False, lazy: bool = False) -> dict[str, torch.Tensor]:
    """The file's tensors; with `shapes_only`, meta tensors of their shapes and dtypes from the header alone; with
    `lazy`, `_LazyTensor`s, each read when it is needed."""
    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}
            headers = {k: (s.get_shape(), s.get_dtype()) for k, s in slices.items()}
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is truncated or corrupt ({reason[:120]}); download or save the model again"
        ) from None
    # The header alone says what loading would allocate: refused before a byte of it is.
    for name, (_, dtype) in headers.items():
        if dtype not in _READABLE_DTYPES:
            raise _unsupported_dtype(path, name, dtype)
    if shapes_only:
        return {k: torch.empty(shape, dtype=_READABLE_DTYPES[dtype], device="meta")
                for k, (shape, dtype) in headers.items()}
    if lazy:
        mapped = _MappedFile(path)
        return {k: _LazyTensor(mapped, k, tuple(shape), _READABLE_DTYPES[dtype]) for k, (shape, dtype) in headers.items()}
    _check_fits_in_memory(path.stat().st_size, f"loading {path}")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is truncated or corrupt ({reason[:120]}); download or save the model again"
        ) from None


def _read_bin(path: Path, shapes_only: bool = False, lazy: bool = False) -> dict[str, torch.Tensor]:
    try:
        if lazy and not shapes_only:
            try:  # memory-mapped: a tensor's pages are read when it is used, as lazy safetensors are
                return _state_of(torch.load(path, map_location="cpu", weights_only=True, mmap=True), path)
            except RuntimeError:  # the legacy (non-zip) format cannot be mapped: read it whole
                pass
        state = torch.load(path, map_location="meta" if shapes_only else "cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} cannot be loaded safely as plain tensors ({reason[:120]}); use a model.safetensors file instead"
        ) from None
    return _state_of(state, path)


def _state_of(state, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def read_state_dict(directory: Path, shapes_only: bool = False, lazy: bool = False) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of a model directory, whichever weight file it has, and the file (or index) they came from. With
    `shapes_only`, meta tensors: names, shapes and dtypes, no values read; with `lazy`, tensors read when used."""
    single, index, pickle = (directory / n for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))
    if single.is_file():
        return _read_safetensors(single, shapes_only, lazy), single
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to weight file names; restore or "
                                  "re-download it")
        shards = sorted(set(weight_map.values()))
        if not shards:
            raise CheckpointError(f"{index} lists no weight files")
        inside = directory.resolve()
        for shard in shards:  # before any is opened: an index names files in its own folder, nothing else
            if Path(shard).is_absolute() or not (directory / shard).resolve().is_relative_to(inside):
                raise CheckpointError(f"{index} names {shard!r}, a file outside the model folder; refused")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (directory / shard).is_file():
                raise ModelNotFoundError(f"{directory / shard} is missing (listed in {index.name}); download it again")
            state.update(_read_safetensors(directory / shard, shapes_only, lazy))
        return state, index
    if pickle.is_file():
        return _read_bin(pickle, shapes_only, lazy), pickle
    raise ModelNotFoundError(
        f"{directory} has no model.safetensors or pytorch_model.bin; {GET_WEIGHTS_HINT}"
    )


# -- Hugging Face GPT-2 → our names --------------------------------------------------------------------------------


def _rename_hf(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """HF names → ours, each with the file's own name (for error messages) and the tensor in our layout."""
    out = {}
    for key, tensor in state.items():
        name = key.removeprefix("transformer.")
        if _HF_BUFFER.match(name) or name == "lm_head.weight":
            continue  # mask buffers are recomputed; the output head is tied to wte by construction
        ours = "transformer." + name
        if ours.endswith(_HF_TRANSPOSED) and tensor.dim() == 2:
            tensor = tensor.t()
        out[ours] = (key, tensor)
    return out


# -- building the model --------------------------------------------------------------------------------------------


def _build(
    config: GPT2Config,
    named: dict[str, tuple[str, torch.Tensor]],
    source: Path,
    transposed: bool = False,
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    stored: str | None = None,
) -> GPT2:
    """The model from checked tensors. `quantize` packs each projection and the token embedding as it is read (the
    float tensor is dropped at once); `stored` is the kind of a quantised checkpoint, whose files hold the values and
    scales already. Either way the model computes in float32 (`quant.py`)."""
    model = GPT2(config, device="meta")  # shapes only: nothing is allocated until the checked tensors are assigned
    expected = {}
    packed = set(quant.quantized_modules(model)) if quantize or stored else set()
    for key, ref in model.state_dict().items():
        if stored == "int8" and key.removesuffix(".weight") in packed:  # the scales first: each layer packs at once
            expected[f"{key}_scale"] = torch.empty(ref.shape[0], device="meta")
        expected[key] = ref
    missing = [k for k in expected if k not in named]
    unexpected = [named[k][0] for k in named if k not in expected]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CheckpointError(f"{source} is missing {len(missing)} tensor(s): {shown}; its config.json does not match the weights, or the file is incomplete")
    if unexpected:
        shown = ", ".join(unexpected[:3]) + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else "")
        raise CheckpointError(f"{source} has {len(unexpected)} unexpected tensor(s): {shown}; it is not a GPT-2 checkpoint for this config")
    state: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    layers: dict[str, quant.QuantLinear | quant.QuantEmbedding] = {}
    for key, ref in expected.items():
        file_key, tensor = named.pop(key)  # popped: a quantising load holds no float tensor past its packing
        if tuple(tensor.shape) != tuple(ref.shape):
            want, got = tuple(ref.shape), tuple(tensor.shape)
            if transposed and key.endswith(_HF_TRANSPOSED):
                want, got = want[::-1], got[::-1]  # report in the file's own layout
            raise CheckpointError(
                f"{source}: tensor {file_key} has shape {got}, expected {want} for this config; "
                f"config.json does not match the weights"
            )
        module, _, leaf = key.rpartition(".")
        is_values = module in packed and leaf == "weight"
        allowed = {"int8": (torch.int8,), "bfloat16": (torch.bfloat16,)}[stored] if stored and is_values else WEIGHT_DTYPES
        if tensor.dtype not in allowed:
            raise _unsupported_dtype(source, file_key, str(tensor.dtype).removeprefix("torch."))
        lazy = tensor if isinstance(tensor, _LazyTensor) else None
        if lazy is not None:
            tensor = lazy.load()  # a read-only view of the mapped file: whatever is kept below is a copy
        damaged = CheckpointError(f"{source}: tensor {file_key} holds NaN or infinite values; these weights are damaged "
                                  "(a training run that diverged?), so they would only generate garbage")
        quantizing = is_values and not stored
        if tensor.device.type != "meta" and tensor.is_floating_point() and not quantizing and not torch.isfinite(tensor).all():
            raise damaged
        if tensor.device.type == "meta":
            state[key] = tensor
        elif leaf == "weight_scale":
            if not (tensor > 0).all():
                raise CheckpointError(f"{source}: tensor {file_key} holds scales that are not positive; the "
                                      "quantised weights are damaged, so save or quantise the model again")
            scales[module] = tensor.float().clone()
        elif is_values and stored:
            layers[module] = quant.packed_layer(module, tensor, scales.pop(module, torch.ones(tensor.shape[0])),
                                                lazy.release_rows if lazy else None)
        elif is_values:
            try:  # quantised slice by slice, each slice checked to be finite as it is read
                layers[module] = quant.quantized_layer(module, tensor, quantize, lazy.release_rows if lazy else None)
            except quant.QuantizationError:
                raise damaged from None
        else:
            target = torch.float32 if packed else (dtype or torch.float32)
            state[key] = tensor.to(target, copy=lazy is not None)
        del tensor
        if lazy is not None:
            lazy.release()  # its pages go back: the next tensor's are the only ones resident
    # Packed layers' float weights never enter `state`: their modules are replaced below, and the name check above
    # already proved every tensor present.
    if packed:
        state = {k: v for k, v in state.items() if k.removesuffix(".weight") not in packed}
    model.load_state_dict(state, assign=True, strict=not packed)
    # The model holds them now. Cleared before the layout change, which copies each Linear weight: with the dict's
    # references gone each old copy is freed as its new one is made, so a load never holds 1.6 models.
    state.clear()
    model.conv1d_layout_()
    if layers:
        quant.install(model, layers)
    return model.eval()


def _load_adapter(directory: Path, dtype: torch.dtype | None, shapes_only: bool = False,
                  quantize: str | None = None) -> GPT2:
    """The base model an adapter names with `(alpha / rank) · B A` added to each adapted weight: the same model
    `finetune --lora --merge` would have written, built at load time (the base must still be where it was)."""
    meta = adapter_meta(directory)
    try:
        scale = float(meta["alpha"]) / int(meta["rank"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise CheckpointError(f"{directory / 'adapter_config.json'}: rank and alpha are missing or invalid") from None
    model = load_weights(adapter_base(directory), dtype=torch.float32, shapes_only=shapes_only)
    if quant.quantization_of(model) is not None:
        raise CheckpointError(f"{directory}: its base {meta['base']} is quantised ({quant.quantization_of(model)}); a "
                              "LoRA adapter adds to float weights, so it needs the float base it was trained on")
    state = _read_safetensors(directory / "adapter.safetensors", shapes_only)
    modules = dict(model.named_modules())
    names = {k.rsplit(".lora_", 1)[0] for k in state}
    with torch.no_grad():
        for name in sorted(names):
            A, B = state.get(f"{name}.lora_A"), state.get(f"{name}.lora_B")  # (r, in), (out, r)
            linear = modules.get(name)
            if A is None or B is None or not isinstance(linear, torch.nn.Linear):
                raise CheckpointError(f"{directory}: adapter tensor {name} does not fit base model {meta['base']}")
            if B.shape[0] != linear.out_features or A.shape[1] != linear.in_features or A.shape[0] != B.shape[1]:
                raise CheckpointError(
                    f"{directory}: adapter {name} has shapes {tuple(B.shape)} @ {tuple(A.shape)}, expected "
                    f"({linear.out_features}, r) @ (r, {linear.in_features})"
                )
            linear.weight += (B.float() @ A.float()) * scale  # in place: keeps the weight's memory layout
    model.chat_template = meta.get("chat_template")
    if quantize == quant.FLOAT and not shapes_only:
        return quant.pack_model(model)
    if quantize is not None and not shapes_only:
        return quant.quantize_model(model, quantize)
    return model.to(dtype) if dtype is not None else model


def load_weights(path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                 shapes_only: bool = False, quantize: str | None = None, stream: bool = False) -> GPT2:
    """A `GPT2` from a model directory (Hugging Face GPT-2, our own checkpoint, or a LoRA adapter over one), in eval
    mode. `shapes_only` runs every check of a load (files present and readable, names, shapes and dtypes against the
    config) on the weight files' headers, reading no values: the model comes back on the meta device. `quantize`
    ("int8" or "bfloat16") packs the weights as they are read (`quant.py`); a quantised checkpoint loads quantised
    whatever is asked, and another quantisation of it is refused (its float weights are gone). `quant.FLOAT` packs
    float32 weights without rounding (`quant.pack_model`), and leaves a quantised checkpoint as it is. `stream` reads the
    file tensor by tensor, each copied and its pages dropped, as a quantising load does: the process then holds one
    copy of the weights, never the file's pages beside them (for training, which keeps the model for long)."""
    if quantize is not None and quantize != quant.FLOAT:
        quant.check_kind(quantize)
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ModelNotFoundError(f"no model directory at {directory}; {GET_WEIGHTS_HINT}")
    if _is_adapter(directory):
        model = _load_adapter(directory, dtype, shapes_only, quantize)
        model.name_or_path = str(directory)
        return model.to(device) if device is not None else model
    meta = _read_json(directory / "config.json")
    lazy = quantize is not None or stream
    if "model_type" in meta:
        config = config_from_hf(meta, str(directory / "config.json"))
        state, source = read_state_dict(directory, shapes_only, lazy)
        model = _build(config, _rename_hf(state), source, transposed=True, dtype=dtype, quantize=quantize)
        chat_template = None
    else:
        config, chat_template, stored = _our_config(meta, str(directory / "config.json"))
        if stored is not None and quantize not in (None, stored, quant.FLOAT):
            raise ConfigError(f"{directory} is already quantised to {stored}; load it as it is, or quantise its float "
                              "original")
        state, source = read_state_dict(directory, shapes_only, lazy or stored is not None)
        model = _build(config, {k: (k, t) for k, t in state.items()}, source, dtype=dtype,
                       quantize=None if stored else quantize, stored=stored)
    model.chat_template = chat_template
    model.name_or_path = str(directory)
    return model.to(device) if device is not None else model


def save_checkpoint(model: GPT2, path: str | os.PathLike, chat_template: str | None = None) -> Path:
    """Write `config.json` + `model.safetensors` to `path`, atomically: into a temporary sibling, then renamed, so
    a crash leaves either the old checkpoint or the new one, never half of one."""
    path = Path(path).expanduser()
    with atomic_directory(path, MODEL_DIR_FILES) as tmp:
        write_model_files(model, tmp, chat_template)
    return path


def write_model_files(model: GPT2, directory: Path, chat_template: str | None = None) -> None:
    """`config.json` + `model.safetensors` into an existing directory (callers make it atomic)."""
    template = chat_template if chat_template is not None else getattr(model, "chat_template", None)
    kind = quant.quantization_of(model)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION if kind else 1, **model.config.to_dict(),
            "chat_template": template}
    if kind:
        meta["quantization"] = kind
    (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    wte = state.get("transformer.wte.weight")
    if wte is not None and wte.shape[0] > model.config.vocab_size:  # rows a training run padded on (`pad_vocab_`)
        state["transformer.wte.weight"] = wte[: model.config.vocab_size].clone()
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if it exists on this machine (else a `ConfigError` saying what does), or the default: CUDA when
    present, else the CPU."""
    if device is None or device == "":
        return default_device()
    name = repr(str(device))
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {name} is not a device; use cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name}: no CUDA GPU is usable here (or this torch has no CUDA); use cpu")
        count = torch.cuda.device_count()
        if d.index is not None and d.index >= count:
            raise ConfigError(f"device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {name}: no Apple GPU is usable here; use cpu")
        if d.index not in (None, 0):
            raise ConfigError(f"device {name}: a Mac has one Apple GPU, mps")
    elif d.type != "cpu":
        raise ConfigError(f"device {name}: gpt2tui runs on cpu, cuda or mps")
    elif d.index not in (None, 0):  # torch accepts cpu:1 and then runs on the one CPU device as if it were cpu
        raise ConfigError(f"device {name}: the CPU is one device, cpu (torch spreads work over its cores itself)")
    return d


def load_model(
    name: str | os.PathLike = "gpt2",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    allow_download: bool = True,
    quantize: str | None = None,
    pack: bool = False,
):
    """`(model, tokenizer)` for a name, directory or checkpoint (see `resolve`), in eval mode on `device`
    (default: CUDA if present, else CPU) in `dtype` (default: bfloat16 on a GPU that has it, else float32).

    `quantize="int8"` packs the weights to int8 (`quant.py`). On the CPU, `dtype=torch.bfloat16` packs them to
    bfloat16 and computes in float32: the CPU has no fast bfloat16 arithmetic for one token at a time, but reading half
    the bytes is what makes decoding faster. `pack=True`: a float32 model on the CPU is packed as it is read, without
    rounding (`quant.pack_model`: decode steps run 1.6-2.5x faster on that layout; what the commands and the server
    load)."""
    path = resolve(name, allow_download=allow_download)
    device = pick_device(device)
    if quantize is not None:
        quant.check_kind(quantize)
    if dtype is None:
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float32
    if quantize is None and dtype == torch.bfloat16 and device.type == "cpu":
        quantize = "bfloat16"
    if pack and quantize is None and dtype == torch.float32 and quant.native_available(device):
        quantize = quant.FLOAT
    model = load_weights(path, dtype=dtype, device=device, quantize=quantize)
    # Deferred for start-up time: the tokenizer module brings the `regex` package (~0.1 s), which `gpt2tui info`, the
    # one other user of this module on the command line, never needs.
    from .tokenizer import Tokenizer

    tokenizer = Tokenizer()
    if model.config.vocab_size < tokenizer.n_vocab:
        raise ConfigError(
            f"{path}: vocab_size {model.config.vocab_size} is smaller than the GPT-2 tokenizer's {tokenizer.n_vocab}; "
            f"this model was not trained with GPT-2's tokenizer"
        )
    return model, tokenizer
