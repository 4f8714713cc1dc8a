"""LoRA: low-rank adapters on a model's `nn.Linear` layers (Hu et al., 2021).

`W x` becomes `W x + (alpha / r) · B A x`, with `A (r, in)` random and `B (out, r)` zero, so training starts from
exactly the base model. Only A and B train; `merge_lora` folds `B A` back into W and removes the adapters, which
gives a plain GPT-2 checkpoint with the same logits.

An adapter saved on its own is a directory: `adapter_config.json` (the base model and the settings) and
`adapter.safetensors` (the A and B tensors).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from gpt2tui.atomic import MODEL_DIR_FILES, atomic_directory
from gpt2tui.errors import CheckpointError, ConfigError
from gpt2tui.weights import adapter_base, adapter_meta, load_model, pick_device

ADAPTER_FORMAT = "gpt2tui-lora"


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])  # module-name suffixes

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update."""
    def __init__(self, base: nn.Linear, config: LoRAConfig):
        super().__init__()
        self.base = base
        self.scale = config.scale
        self.dropout = nn.Dropout(config.dropout)
        self.lora_A = nn.Parameter(torch.empty(config.rank, base.in_features, device=base.weight.device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, config.rank, device=base.weight.device))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own init, and the LoRA paper's code
        self.enabled = True  # off: the frozen base alone (`adapters_disabled`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return self.base(x) + self.scale * update

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale  # (out, in)
            self.base.weight += delta.to(self.base.weight.dtype)
        return self.base


def _targets(model: nn.Module, targets: list[str]) -> list[tuple[nn.Module, str, nn.Linear]]:
    found = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear) and any(f"{name}.{child_name}".endswith(t) for t in targets):
                found.append((module, child_name, child))
    return found


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Freeze every weight and put adapters on the Linear layers whose names end with one of `config.targets`."""
    if config.rank < 1:
        raise ConfigError(f"LoRA rank must be at least 1, got {config.rank}")
    found = _targets(model, config.targets)
    if not found:
        raise ConfigError(f"no Linear layer matches the LoRA targets {', '.join(config.targets)}; "
                          f"GPT-2's are c_attn, c_proj (attention and MLP) and c_fc")
    full = min(min(linear.in_features, linear.out_features) for _, _, linear in found)
    if config.rank > full:
        # A rank past a layer's smaller side adds parameters, not expressiveness (and a huge one exhausts memory).
        raise ConfigError(f"LoRA rank {config.rank} is above the full rank {full} of the adapted layers; use at most "
                          f"{full} (typical ranks are 4 to 64)")
    for p in model.parameters():
        p.requires_grad_(False)
    for parent, name, linear in found:
        setattr(parent, name, LoRALinear(linear, config))
    model.lora_config = config
    return model


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """The model with every adapter switched off: its base, without a second copy of the weights (preference
    tuning's reference model). A model without adapters is itself."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    before = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m, was in zip(layers, before, strict=True):
            m.enabled = was


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and remove it: a plain model with the same outputs."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    if hasattr(model, "lora_config"):
        del model.lora_config
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if ".lora_" in k}


def save_adapter(model: nn.Module, path: str | os.PathLike, base: str, chat_template: str | None = None) -> Path:
    """Write the adapters and their settings to `path`, atomically (a temporary sibling, then renamed)."""
    path = Path(path).expanduser()
    with atomic_directory(path, MODEL_DIR_FILES) as tmp:
        meta = {"format": ADAPTER_FORMAT, "base": base, **asdict(model.lora_config), "chat_template": chat_template}
        (tmp / "adapter_config.json").write_text(json.dumps(meta, indent=2) + "\n")
        save_file(adapter_state(model), str(tmp / "adapter.safetensors"))
    return path


def is_adapter(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / "adapter_config.json").is_file()


def load_adapted(path: str | os.PathLike, device=None):
    """`(model, tokenizer)`: the base model an adapter names, with the adapter applied (not merged), in eval mode."""
    path = Path(path).expanduser()
    meta = adapter_meta(path)  # a gpt2tui adapter, with a base that ends at a model (no cycle)
    model, tokenizer = load_model(adapter_base(path), device=device, dtype=torch.float32)
    try:
        config = LoRAConfig(rank=meta["rank"], alpha=meta["alpha"], dropout=meta.get("dropout", 0.0),
                            targets=meta["targets"])
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{path / 'adapter_config.json'}: rank, alpha or targets are missing or invalid "
                              f"({e}); train the adapter again") from None
    apply_lora(model, config)
    try:
        state = load_file(str(path / "adapter.safetensors"))
    except Exception as e:
        raise CheckpointError(f"{path / 'adapter.safetensors'} is unreadable ({e}); train the adapter again") from None
    missing = set(adapter_state(model)) - set(state)
    if missing or set(state) - set(adapter_state(model)):
        raise CheckpointError(f"{path}: adapter tensors do not match base model {meta['base']}")
    model.load_state_dict(state, strict=False)
    model.chat_template = meta.get("chat_template")
    return model.to(model.device if device is None else pick_device(device)).eval(), tokenizer
