"""gpt2tui as an lm-evaluation-harness model: `GPT2TUILM`, registered as `gpt2tui`.

    gpt2tui evaluate --harness hellaswag,lambada_openai --model gpt2 [--limit N] [--include-path DIR]

The harness (0.4.x) finds models only in its own table, never through package entry points, so `lm_eval --model
gpt2tui` cannot see this class unless something imports this module first: `gpt2tui evaluate --harness` does, then
calls the harness's `simple_evaluate`. From Python, import this module and pass `model="gpt2tui"` (with
`model_args="model=PATH"`) or a `GPT2TUILM` instance.

- `loglikelihood`: the harness's own tokenisation of `(context, continuation)` (`TemplateLM`), then
  `scoring.score`, which batches the requests and prefills a context shared by several continuations (the choices of
  a multiple-choice task) once into the KV cache;
- `loglikelihood_rolling`: disjoint windows of the full context length after `<|endoftext|>`, as the harness's
  `hf` model makes them (`scoring.rolling_windows`);
- `generate_until`: the KV-cached batch decoder (`gpt2tui.generate`), greedy unless the task asks to sample, stopping
  at the task's stop strings and `<|endoftext|>`; contexts lose tokens from the left to leave room for `max_gen_toks`.

Needs the `eval` extra: pip install 'gpt2tui[eval]'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lm_eval import simple_evaluate
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.tasks import TaskManager
from tqdm import tqdm

from gpt2tui.generate import generate
from gpt2tui.model import GPT2
from gpt2tui.weights import load_model

from .scoring import Pair, encode, rolling_windows, score

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_model("gpt2tui")
class GPT2TUILM(TemplateLM):
    """`model`: a name, directory or checkpoint (`load_model`), or a loaded `GPT2` (then pass `tokenizer` too)."""

    def __init__(
        self,
        model: str | GPT2 = "gpt2",
        tokenizer=None,
        device: str | None = None,
        batch_size: int | str = 16,
        max_gen_toks: int = 256,
        dtype: str = "float32",
        **_ignored,
    ):
        super().__init__()
        if isinstance(model, GPT2):
            if tokenizer is None:
                raise ValueError("a loaded GPT2 needs its tokenizer: GPT2TUILM(model, tokenizer=...)")
            self._model, self.tokenizer = model, tokenizer
        else:
            if dtype not in DTYPES:
                raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
            self._model, self.tokenizer = load_model(str(model), device=device, dtype=DTYPES[dtype])
        self._model.eval()
        # The harness passes batch_size through as given on its command line ("auto" included): a number is a number,
        # anything else takes the default.
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.max_gen_toks = int(max_gen_toks)
        self._device = self._model.device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_token

    @property
    def max_length(self) -> int:
        return self._model.config.context_length

    @property
    def tokenizer_name(self) -> str:
        return "gpt2"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return encode(self.tokenizer, string)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens)

    def _score(self, pairs: list[Pair], disable_tqdm: bool):
        with tqdm(total=len(pairs), disable=disable_tqdm, desc="gpt2tui: scoring") as bar:
            return score(self._model, pairs, self.batch_size, progress=bar.update)

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        scores = self._score([(ctx, cont) for _, ctx, cont in requests], disable_tqdm)
        out = []
        for (key, _, _), s in zip(requests, scores, strict=True):
            result = (s.logprob, s.greedy)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        pairs, owner = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            windows = rolling_windows(
                self.tok_encode(text), self.eot_token_id, self.max_length, self.max_length
            )
            pairs += windows
            owner += [i] * len(windows)
        totals = [0.0] * len(requests)
        for i, s in zip(owner, self._score(pairs, disable_tqdm), strict=True):
            totals[i] += s.logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(
                i
            )  # one decoder batch per gen_kwargs
        with tqdm(total=len(requests), disable=disable_tqdm, desc="gpt2tui: generating") as bar:
            for rows in groups.values():
                kwargs = dict(requests[rows[0]].args[1])
                until = kwargs.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
                if max_new >= self.max_length:
                    raise ValueError(
                        f"max_gen_toks {max_new} leaves no room for a context in the model's "
                        f"{self.max_length}-token window"
                    )
                sampling = dict(temperature=0.0)
                if kwargs.get("do_sample") and kwargs.get("temperature", 1.0) > 0:
                    sampling = dict(
                        temperature=float(kwargs.get("temperature", 1.0)),
                        top_k=kwargs.get("top_k"),
                        top_p=kwargs.get("top_p"),
                        seed=kwargs.get("seed"),
                    )
                for s in range(0, len(rows), self.batch_size):
                    batch = rows[s : s + self.batch_size]
                    # As the harness's hf model: the context keeps its last (window - max_gen_toks) tokens.
                    prompts = [
                        self.tok_encode(requests[i].args[0])[-(self.max_length - max_new) :]
                        or [self.eot_token_id]
                        for i in batch
                    ]
                    texts = generate(
                        self._model,
                        self.tokenizer,
                        prompts,
                        max_new_tokens=max_new,
                        stop=[u for u in until if u],
                        **sampling,
                    )
                    for i, text in zip(batch, texts, strict=True):
                        out[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    bar.update(len(batch))
        return out  # type: ignore[return-value]


def run_harness(
    model: str | GPT2TUILM,
    tasks: list[str],
    limit: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
    include_path: str | None = None,
    num_fewshot: int | None = None,
) -> dict:
    """`lm_eval.simple_evaluate` with this adapter: the harness's results dictionary."""
    lm = model if isinstance(model, GPT2TUILM) else GPT2TUILM(model, device=device, batch_size=batch_size)
    manager = None
    if include_path:
        # Indexing the harness's thousands of built-in task files takes seconds; a run of the user's own tasks only
        # skips it.
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if not set(tasks) <= set(manager.all_tasks):
            manager = None
    manager = manager or TaskManager(include_path=include_path)
    return simple_evaluate(
        model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot, task_manager=manager, log_samples=False
    )
