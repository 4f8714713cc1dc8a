"""GPT2Config: the model's shape, with the seed's field names and OpenAI's four official sizes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError

ATTN_BACKENDS = ("auto", "triton", "sdpa", "reference")
# The largest shapes gpt2tui builds: far past any GPT-2 (gpt2-xl is 48 layers of 1600), and small enough that a
# damaged or hostile config.json (a million layers, an embedding of 10^12) is refused at once instead of hanging or
# exhausting memory while the model is laid out.
LIMITS = {"vocab_size": 1 << 22, "context_length": 1 << 20, "emb_dim": 1 << 16, "n_heads": 1 << 10, "n_layers": 1 << 10}
MAX_PARAMS = 1 << 40


@dataclass
class GPT2Config:
    vocab_size: int = 50257  # 50,000 BPE merges + 256 byte tokens + <|endoftext|>
    context_length: int = 1024  # positions the model has embeddings for
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1  # on embeddings, attention probabilities and both residual branches
    qkv_bias: bool = True  # OpenAI's weights have biases on the q/k/v projection
    attn_backend: str = "auto"  # "auto" | "triton" | "sdpa" | "reference"; $GPT2TUI_ATTENTION overrides

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                shown = repr(value) if len(repr(value)) < 40 else repr(value)[:30] + "..."
                raise ConfigError(f"config field {name} must be a positive integer, got {shown}")
            if value > LIMITS[name]:
                raise ConfigError(f"config field {name} is {value}, more than gpt2tui builds (at most {LIMITS[name]}); "
                                  "the config is damaged, or not a GPT-2's")
        if self.emb_dim % self.n_heads:
            raise ConfigError(
                f"emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads}); pick sizes whose head "
                f"dimension emb_dim / n_heads is a whole number"
            )
        if self.n_params() > MAX_PARAMS:
            raise ConfigError(f"this config describes {self.n_params():.3g} parameters, more than gpt2tui builds; the "
                              "config is damaged, or not a GPT-2's")
        rate = self.drop_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ConfigError(f"config field drop_rate must be a number in [0, 1), got {rate!r}")
        if not isinstance(self.qkv_bias, bool):  # "false" in a hand-edited config.json would read as True
            raise ConfigError(f"config field qkv_bias must be true or false, got {self.qkv_bias!r}")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ConfigError(f"attn_backend must be one of {', '.join(ATTN_BACKENDS)}, got {self.attn_backend!r}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPT2Config:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> GPT2Config:
        """Build from a JSON dict, rejecting unknown fields by name rather than silently dropping them."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigError(f"{source} has unknown field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(fields))}")
        try:
            return cls(**data)
        except TypeError as e:  # a wrong type that __post_init__ did not catch
            raise ConfigError(f"{source} is not a valid GPT-2 config: {e}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def n_params(self) -> int:
        """Parameter count with the output head tied to the token embedding (as OpenAI's GPT-2)."""
        C, V, T = self.emb_dim, self.vocab_size, self.context_length
        qkv_bias = 3 * C if self.qkv_bias else 0
        block = 2 * 2 * C + (C * 3 * C + qkv_bias) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
        return V * C + T * C + self.n_layers * block + 2 * C


# The four sizes OpenAI released; every other field keeps its default.
PRESETS: dict[str, dict] = {
    "gpt2": dict(emb_dim=768, n_heads=12, n_layers=12),  # 124M
    "gpt2-medium": dict(emb_dim=1024, n_heads=16, n_layers=24),  # 355M
    "gpt2-large": dict(emb_dim=1280, n_heads=20, n_layers=36),  # 774M
    "gpt2-xl": dict(emb_dim=1600, n_heads=25, n_layers=48),  # 1558M
}
