"""GPT-2: pre-LayerNorm transformer blocks, tanh-GELU, learned positions, output head tied to the token embedding.

Module names follow OpenAI's checkpoint (`transformer.h.0.attn.c_attn`, ...), so loading weights is a rename-free copy
(with Hugging Face's Conv1D weights transposed into `nn.Linear`'s layout). Attention goes through `gpt2tui.kernels`,
whose dispatch rule picks the backend; the model only says which one its config asks for.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2tui.kernels import causal_attention, decode_attention, resolve_backend
from gpt2tui.kernels.cross_entropy import linear_cross_entropy

from .cache import KVCache
from .config import GPT2Config
from .quant import QuantEmbedding, QuantLinear


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The plain loss over whole logits `(B, T, V)` in float32, -100 ignored; "none" gives `(B, T)`."""
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction=reduction)
    return loss.view(targets.shape) if reduction == "none" else loss


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config, device=None):
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.drop_rate
        self.backend = config.attn_backend
        self.c_attn = nn.Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias, device=device)
        self.c_proj = nn.Linear(config.emb_dim, config.emb_dim, device=device)
        self.resid_dropout = nn.Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        H = self.n_heads
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 × (B, T, C)
        q = q.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            cache.write(layer, k, v)
        if cache is None or cache.empty:
            # Training, and a prefill into an empty cache, attend only among the new tokens: the fused causal op.
            dropout_p = self.dropout if self.training else 0.0
            y = causal_attention(q, k, v, dropout_p=dropout_p, backend=self.backend)  # (B, H, T, D)
        else:
            y = decode_attention(
                q, cache.k[layer], cache.v[layer], cache.lens_after, backend=self.backend, max_len=cache.max_after
            )  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config, device=None):
        super().__init__()
        self.c_fc = nn.Linear(config.emb_dim, 4 * config.emb_dim, device=device)
        self.c_proj = nn.Linear(4 * config.emb_dim, config.emb_dim, device=device)
        self.dropout = nn.Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # OpenAI trained with the tanh approximation of GELU; the exact erf form drifts from their weights.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPT2Config, device=None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.emb_dim, eps=1e-5, device=device)
        self.attn = CausalSelfAttention(config, device)
        self.ln_2 = nn.LayerNorm(config.emb_dim, eps=1e-5, device=device)
        self.mlp = MLP(config, device)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


_FEW_ROWS = 64  # up to this many rows of hidden states, the CPU head multiplies W by them (`GPT2.head`)


class GPT2(nn.Module):
    def __init__(self, config: GPT2Config, device: torch.device | str | None = None):
        """`device="meta"` builds the shapes alone, for a loader to fill: no memory, and no initialisation run (the
        meta form of nn.Embedding's normal_ init is a Python decomposition whose first use imports torch._dynamo:
        two seconds of every load)."""
        super().__init__()
        self.config = config
        self.chat_template: str | None = None  # carried with the checkpoint; set by training or loading
        meta = torch.device(device or "cpu").type == "meta"

        def embedding(n: int) -> nn.Embedding:  # a given weight skips the init
            weight = torch.empty(n, config.emb_dim, device=device) if meta else None
            return nn.Embedding(n, config.emb_dim, _weight=weight, device=device)

        self.transformer = nn.ModuleDict(
            dict(
                wte=embedding(config.vocab_size),
                wpe=embedding(config.context_length),
                drop=nn.Dropout(config.drop_rate),
                h=nn.ModuleList(Block(config, device) for _ in range(config.n_layers)),
                ln_f=nn.LayerNorm(config.emb_dim, eps=1e-5, device=device),
            )
        )
        if meta:
            return
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch's output projection shrinks with depth so the sum stays O(1).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))
        self.conv1d_layout_()

    def conv1d_layout_(self) -> GPT2:
        """Store every Linear weight transposed in memory, `(in, out)` row-major (OpenAI's Conv1D layout), keeping
        nn.Linear's logical `(out, in)` shape. A one-token decode step multiplies a single row by each weight; on
        the CPU that reads this layout ~13% faster (benchmarks/RESULTS.md). Hugging Face files arrive in this layout,
        so loading them copies nothing. The loader calls this again after assigning weights."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                w = module.weight
                if w.stride() != (1, w.shape[0]):
                    w.data = w.data.t().contiguous().t()
        return self

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def pad_vocab_(self, multiple: int = 64) -> GPT2:
        """Grows the token embedding, and with it the tied head, to a multiple of `multiple` rows (50,257 → 50,304),
        for training: the head's product and the fused loss then run on shapes GPU kernels tile evenly (nanoGPT's
        padding). The new rows start at zero and are never a target, so training pushes their logits down; `head`
        leaves them out, and a saved checkpoint keeps only `config.vocab_size` rows (`weights.write_model_files`)."""
        wte = self.transformer.wte
        V = self.config.vocab_size
        rows = -(-V // multiple) * multiple
        if wte.weight.shape[0] != rows:
            weight = wte.weight.new_zeros(rows, wte.weight.shape[1])  # (V_padded, C)
            weight[:V] = wte.weight.detach()[:V]
            wte.weight = nn.Parameter(weight, requires_grad=wte.weight.requires_grad)
            wte.num_embeddings = rows
        return self

    def num_params(self) -> int:
        packed = sum(m.n * m.k for m in self.modules() if isinstance(m, (QuantLinear, QuantEmbedding)))
        return sum(p.numel() for p in self.parameters()) + packed

    @property
    def device(self) -> torch.device:
        return self.transformer.ln_f.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype: the parameters', or float32 in a model whose weights are packed (`quant.py`)."""
        return self.transformer.ln_f.weight.dtype

    def attention_backend(self) -> str:
        """The attention backend this model dispatches to on its current device and dtype (the kernels' rule)."""
        return resolve_backend(self.config.attn_backend, self.device, self.config.head_dim, self.dtype)

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-LayerNorm hidden states `(B, T, C)` of token ids `(B, T)`, writing into `cache` if given."""
        B, T = idx.shape
        if cache is None:
            if T > self.config.context_length:
                raise ValueError(f"sequence of {T} tokens exceeds the context length {self.config.context_length}")
            pos = torch.arange(T, device=idx.device)  # (T,)
        else:
            pos = cache.begin(T)  # (B, T): each row continues from its own length
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)  # (B, T, C)
        if cache is not None:
            cache.commit()
        return self.transformer.ln_f(x)  # (B, T, C)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits `(..., V)` from hidden states: the output head is the token embedding, transposed."""
        wte = self.transformer.wte
        if isinstance(wte, QuantEmbedding):
            return wte.logits(h)
        w = wte.weight[: self.config.vocab_size]  # (V, C), without the rows `pad_vocab_` may add
        rows = h.numel() // h.shape[-1]
        if h.device.type == "cpu" and 1 < rows <= _FEW_ROWS and not torch.is_grad_enabled():
            # A batched decode step on the CPU: torch's GEMM for a few rows against the (V, C) head packs all of W
            # first, ~4x slower than multiplying W by the rows (benchmarks/RESULTS.md, serving). Same sums.
            return (w @ h.reshape(rows, -1).T).T.reshape(*h.shape[:-1], -1)  # (..., V), a transposed view
        return F.linear(h, w)

    def greedy(self, h: torch.Tensor) -> torch.Tensor:
        """The most likely next token `(...)` int64 of hidden states `(..., C)`: the head's argmax, the first of equal
        logits. A packed head (`quant.pack_model`) finds it without writing the logits."""
        wte = self.transformer.wte
        if isinstance(wte, QuantEmbedding) and wte.n == self.config.vocab_size:
            return wte.argmax(h)
        return self.head(h)[..., : self.config.vocab_size].argmax(-1)  # never a row `pad_vocab_` added

    def head_loss(self, h: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", return_argmax: bool = False):
        """Cross-entropy of the head's logits of `h` `(B, T, C)` against `targets` `(B, T)` (-100 ignored): "mean",
        "sum" or "none" (per token, `(B, T)`); with `return_argmax` also the predicted ids `(B, T)`. A float head
        goes through the fused linear cross-entropy (`kernels/cross_entropy.py`), which never holds the `(B, T, V)`
        logits; a packed head (`quant.py`) computes its logits and the plain loss."""
        wte = self.transformer.wte
        if not isinstance(wte, QuantEmbedding):
            return linear_cross_entropy(h, wte.weight, targets, reduction=reduction, return_argmax=return_argmax)
        logits = wte.logits(h)  # (B, T, V)
        loss = _cross_entropy(logits, targets, reduction)
        return (loss, logits.argmax(-1)) if return_argmax else loss

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of the next-token predictions for `idx` `(B, T)` against `targets` `(B, T)`, without the
        logits (`head_loss`). For a model wrapped in DDP or torch.compile, call the wrapper with
        `targets=..., return_logits=False` instead: this method goes around the wrapper."""
        return self.head_loss(self.hidden(idx), targets, reduction=reduction)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, targets: torch.Tensor | None = None,
                return_logits: bool = True, reduction: str = "mean"):
        """Logits `(B, T, V)`; with `targets` `(B, T)` also the mean cross-entropy (positions marked -100 ignored):
        `(logits, loss)`. With targets and `return_logits=False`: `(predictions, loss)`, the argmax ids `(B, T)` in
        place of the logits, the loss computed without them (`head_loss`): the training step's form; there
        `reduction="none"` gives per-token losses `(B, T)` (preference tuning's log-probabilities, through a DDP or
        compiled wrapper)."""
        h = self.hidden(idx, cache)  # (B, T, C)
        if targets is not None and not return_logits:
            loss, predictions = self.head_loss(h, targets, reduction=reduction, return_argmax=True)
            return predictions, loss
        logits = self.head(h)  # (B, T, V)
        if targets is None:
            return logits
        return logits, _cross_entropy(logits, targets)
