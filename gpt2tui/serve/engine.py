"""The server's generation object: a model with its tokenizer and chat template, and the scheduler that runs it.

The routes never touch tensors: they turn requests into token ids and `RowParams` here, and read events back.
Conversations render with `chat.build_prompt`, the code the chat app uses, so a conversation sent over HTTP is the
same tokens as the same conversation typed in the terminal. Unlike the app, the server never cuts a prompt to fit:
`build_prompt` gets an unbounded window here, and the route refuses a prompt too long for the real one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..chat import build_prompt, template_for
from ..model import GPT2
from ..quant import native_available, pack_model, packing_of
from ..tokenizer import Tokenizer
from ..weights import load_model
from .sampler import RowParams
from .scheduler import DEFAULT_PREFILL_CHUNK, Scheduler, Ticket


def served_name(model: str) -> str:
    """The id clients see for a model name or path: a directory's own name."""
    return Path(str(model)).name or str(model)


class Engine:
    def __init__(
        self,
        model: GPT2,
        tokenizer: Tokenizer,
        model_id: str = "gpt2",
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        model_name: str | None = None,
    ):
        if model.device.type == "cpu" and model.dtype == torch.float32 and packing_of(model) is None:
            if native_available(model.device):
                # Batched decode steps multiply a few rows by every weight: the packed layout's kernels do that
                # 2-3x faster than torch's GEMM at 4-16 rows, with the same float32 numbers (`quant.pack_model`).
                pack_model(model)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        # The name the chat app loads it by (`--model` as given), stored with the page's conversations so that the
        # app continues them with the same model; the id clients see is only the folder's name.
        self.model_name = model_name or model_id
        self.template = template_for(model)
        self.created = int(time.time())
        self.scheduler = Scheduler(
            model, tokenizer, max_batch=max_batch, max_queue=max_queue, prefill_chunk=prefill_chunk
        )

    @classmethod
    def load(
        cls,
        name: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        quantize: str | None = None,
        **scheduler,
    ) -> Engine:
        """A model by name, directory or checkpoint (`weights.load_model`), served as its folder's name."""
        model, tokenizer = load_model(name, device=device, dtype=dtype, quantize=quantize, pack=True)
        return cls(model, tokenizer, model_id=served_name(name), model_name=str(name), **scheduler)

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    @property
    def max_batch(self) -> int:
        return self.scheduler.max_batch

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()

    @property
    def alive(self) -> bool:
        thread = self.scheduler._thread
        return thread is not None and thread.is_alive()

    # -- requests into tokens --------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """A completion prompt. "<|endoftext|>" in it is the document separator, as for `gpt2tui generate` and as
        OpenAI's completions endpoint reads it. An empty prompt starts from that separator."""
        return self.tokenizer.encode(text, allowed_special="all") or [self.tokenizer.eot_token]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def chat_prompt(self, messages: Sequence[Mapping]) -> list[int]:
        """A conversation's ids through the model's chat template, ending with the opening of the reply. Raises
        `chat.ChatError` for a conversation the template cannot render (the message says why)."""
        return build_prompt(self.tokenizer, self.template, messages, sys.maxsize, 0).ids

    @property
    def chat_stop(self) -> tuple[str, ...]:
        """Where the model starts writing the user's next turn: a reply ends there."""
        return self.template.stop

    def token_bytes(self, token: int) -> bytes:
        return self.tokenizer.decode_bytes([token])

    def submit(self, prompts: Sequence[Sequence[int]], params: Sequence[RowParams]) -> Ticket:
        return self.scheduler.submit(prompts, params)
