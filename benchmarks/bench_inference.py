"""Inference on the 124M shape: our engine in float32, bfloat16 and int8 beside `transformers`' `generate`, on the
same random weights, the same 512-token prompts and the same number of greedy tokens, in one run.

For each case and batch size (1, 4, 16): time to first token (prefill + first token), time per later output token
(the median step), tokens/s (batch × later tokens over their time), peak RSS (and peak VRAM on CUDA), and memory-bandwidth utilisation: the bytes one decode step reads (every
weight once, plus the KV cache at its mean length over the run) over the step's time, as a fraction of the read
bandwidth this machine measured in the same run. On the CPU, bfloat16 is `load_model(dtype=torch.bfloat16)`, which packs
the weights to bfloat16 and computes in float32; on CUDA it is a plain bfloat16 model. fp32-packed is
`load_model(pack=True)`: float32 weights in the packed layout, what the commands load on the CPU.

Each case is a fresh Python (this file run as a script), so its peak RSS is its own; every process runs with
OMP_WAIT_POLICY=PASSIVE (gpt2tui's default) so that all engines wait for work the same way. The figures are in each
row's `extra_info`; with `-s` a markdown table (ours against `transformers` at the same batch) prints at the end.

    make bench    # or: .venv/bin/python -m pytest benchmarks/bench_inference.py --benchmark-only -s
    # quick: BENCH_BATCHES=1 BENCH_NEW_TOKENS=4 .venv/bin/python -m pytest benchmarks/bench_inference.py \\
    #            --benchmark-only -s -k "int8 or transformers"
    # on a GPU machine: add -m gpu for the CUDA cases only

BENCH_NEW_TOKENS (default 32, at least 2) sets the new tokens per row; BENCH_BATCHES ("1,4,16") the batch sizes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
import torch

PROMPT_TOKENS = 512
NEW_TOKENS = int(os.environ.get("BENCH_NEW_TOKENS", "32"))
BATCHES = [int(b) for b in os.environ.get("BENCH_BATCHES", "1,4,16").split(",")]
EOS = 50256
KIND_DTYPE = {"fp32": torch.float32, "fp32-packed": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}
BASELINE = {"cpu": "transformers-fp32", "cuda": "transformers-bf16"}  # what the table's ratios divide by


# -- the measuring process (this file run as a script) ----------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_bandwidth(device: str) -> float:
    """Bytes/s a reduction on every thread reads from memory: the best of 6 sums over 1 GiB of float32 (the first
    pays for clock ramp-up and lazy initialisation, so the best is one of the later ones)."""
    x = torch.ones(2**28, device=device)  # (2^28,)
    best = float("inf")
    for _ in range(6):
        _sync(device)
        start = time.perf_counter()
        x.sum()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return x.numel() * x.element_size() / best


def _prompts(batch: int) -> torch.Tensor:
    """Random token ids `(B, T)`, the same for every engine at a batch size; no EOS among them."""
    return torch.randint(0, EOS, (batch, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))


def _weight_bytes(tensors, skip: torch.Tensor) -> int:
    """Bytes of the distinct tensors, less `skip`: a decode step reads every weight once, but of the position table
    only one row per token."""
    distinct = {t.data_ptr(): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in distinct.values()) - skip.numel() * skip.element_size()


def _ours(path: str, kind: str, device: str):
    """Our model, its weight bytes and its KV-cache element size; on the CPU, bf16 packs the weights (load_model)."""
    from gpt2tui import load_model
    from gpt2tui.quant import quantization_of

    model, _ = load_model(path, device=device, dtype=KIND_DTYPE[kind], quantize="int8" if kind == "int8" else None,
                          pack=kind == "fp32-packed")
    # the packed weights are buffers; a float model has none, so this is every weight either way
    nbytes = _weight_bytes([*model.parameters(), *model.buffers()], model.transformer.wpe.weight)
    return model, nbytes, model.dtype.itemsize, quantization_of(model)


def _run_ours(model, prompts: torch.Tensor, n: int) -> tuple[float, list[float]]:
    """Start time and the time each step's tokens came out (the Decoder has synchronised by then)."""
    from gpt2tui import SamplingParams
    from gpt2tui.generate import Decoder

    params = SamplingParams(max_new_tokens=n, temperature=0, stop_at_eos=False)
    start, stamps = time.perf_counter(), []
    for _ in Decoder(model, prompts.tolist(), params, eos_id=EOS):
        stamps.append(time.perf_counter())
    return start, stamps


def _transformers(path: str, kind: str, device: str):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(path, dtype=KIND_DTYPE[kind]).to(device).eval()
    nbytes = _weight_bytes(list(model.parameters()), model.transformer.wpe.weight)
    return model, nbytes, model.dtype.itemsize, None


def _run_transformers(model, prompts: torch.Tensor, n: int) -> tuple[float, list[float]]:
    """Start time and the time each step's logits reached the logits processors, i.e. after each forward."""
    from transformers import LogitsProcessor, LogitsProcessorList

    device = model.device.type
    stamps: list[float] = []

    class StepClock(LogitsProcessor):
        def __call__(self, input_ids, scores):
            _sync(device)
            stamps.append(time.perf_counter())
            return scores

    ids = prompts.to(model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                       pad_token_id=EOS, logits_processor=LogitsProcessorList([StepClock()]))
    return start, stamps


ENGINES = {"ours": (_ours, _run_ours), "transformers": (_transformers, _run_transformers)}


def _peak_rss_mb() -> float:
    """This process's peak RSS. Not `getrusage`'s ru_maxrss: Linux carries that over fork and exec, so a measuring
    process would report pytest's own peak (here, with the fixture's float model) whenever that is higher."""
    with open("/proc/self/status", encoding="ascii") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return round(kib / 1024, 1)


def _peak_memory(device: str) -> dict:
    peaks = {"peak_rss_mb": _peak_rss_mb()}
    if device == "cuda":
        peaks["peak_vram_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peaks


def measure_case(spec: dict) -> dict:
    engine, kind, device, batch, n = spec["engine"], spec["kind"], spec["device"], spec["batch"], spec["new_tokens"]
    load, run = ENGINES[engine]
    model, weight_bytes, kv_itemsize, packed = load(spec["weights"], kind, device)
    run(model, _prompts(batch)[:, :16], 2)  # warm-up: thread pools, allocator, kernel selection, CUDA graphs
    start, stamps = run(model, _prompts(batch), n)
    if len(stamps) != n:
        raise RuntimeError(f"{engine} produced {len(stamps)} steps, expected {n}")
    gaps = [b - a for a, b in pairwise(stamps)]
    step_s = statistics.median(gaps)
    cfg = spec["shape"]
    # decode step j (1..n-1) reads prompt + j cached positions of K and V in every layer: the mean is prompt + n/2
    kv_bytes = 2 * cfg["n_layers"] * batch * (PROMPT_TOKENS + n / 2) * cfg["emb_dim"] * kv_itemsize
    bytes_per_step = weight_bytes + kv_bytes
    return {
        "ttft_s": round(stamps[0] - start, 4),
        "tpot_ms": round(step_s * 1000, 2),
        "tok_s": round(batch * len(gaps) / (stamps[-1] - stamps[0]), 2),
        "weight_mb": round(weight_bytes / 2**20, 1),
        "bytes_per_step_mb": round(bytes_per_step / 2**20, 1),
        "bandwidth_util": round(bytes_per_step / step_s / spec["bandwidth"], 3),
        "packed": packed,
        **_peak_memory(device),
    }


# -- the benchmark (pytest) -------------------------------------------------------------------------------------------

SHAPE = {"n_layers": 12, "emb_dim": 768}  # transformers.GPT2Config(), the 124M shape


def _subprocess(spec: dict) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    run = subprocess.run([sys.executable, str(Path(__file__).resolve()), json.dumps(spec)], capture_output=True,
                         text=True, env=env, timeout=3600)
    if run.returncode != 0:
        pytest.fail(f"measuring process failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpt2-124m-random")
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def bandwidth():
    """Read bandwidth per device, measured once per run in its own process."""
    measured: dict[str, float] = {}

    def of(device: str) -> float:
        if device not in measured:
            measured[device] = _subprocess({"task": "bandwidth", "device": device})["bytes_per_s"]
        return measured[device]

    return of


@pytest.fixture(scope="module")
def table():
    """Collects every case's figures; prints them as one markdown table when the module is done (shown with -s)."""
    rows: dict[tuple[str, int, str], dict] = {}
    yield rows
    if rows:
        print("\n" + summary(rows))


def summary(rows: dict[tuple[str, int, str], dict]) -> str:
    lines = ["| device | batch | case | TTFT s | TPOT ms | tok/s | bandwidth util | peak MB | tok/s vs baseline |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (device, batch, name), r in sorted(rows.items()):
        base = rows.get((device, batch, BASELINE[device]))
        ratio = f"{r['tok_s'] / base['tok_s']:.2f}×" if base else "n/a"
        peak = r.get("peak_vram_mb", r["peak_rss_mb"])
        lines.append(f"| {device} | {batch} | {name} | {r['ttft_s']:.3f} | {r['tpot_ms']:.1f} | {r['tok_s']:.1f} | "
                     f"{r['bandwidth_util']:.0%} | {peak:.0f} | {ratio} |")
    return "\n".join(lines)


cuda = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CASES = [
    pytest.param(("ours", "fp32", "cpu"), id="ours-fp32-cpu"),
    pytest.param(("ours", "fp32-packed", "cpu"), id="ours-fp32-packed-cpu"),
    pytest.param(("ours", "bf16", "cpu"), id="ours-bf16-cpu"),
    pytest.param(("ours", "int8", "cpu"), id="ours-int8-cpu"),
    pytest.param(("transformers", "fp32", "cpu"), id="transformers-fp32-cpu"),
    pytest.param(("transformers", "bf16", "cpu"), id="transformers-bf16-cpu"),
    pytest.param(("ours", "bf16", "cuda"), id="ours-bf16-cuda", marks=cuda),
    pytest.param(("ours", "int8", "cuda"), id="ours-int8-cuda", marks=cuda),
    pytest.param(("transformers", "bf16", "cuda"), id="transformers-bf16-cuda", marks=cuda),
]


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("case", CASES)
def test_inference(benchmark, weights, bandwidth, table, case, batch):
    engine, kind, device = case
    assert NEW_TOKENS >= 2, "BENCH_NEW_TOKENS must be at least 2: time per token needs a second token"
    spec = {"engine": engine, "kind": kind, "device": device, "batch": batch, "new_tokens": NEW_TOKENS,
            "weights": weights, "shape": SHAPE, "bandwidth": bandwidth(device)}
    result = {}
    benchmark.group = f"inference-124m-{device}-b{batch}"
    benchmark.pedantic(lambda: result.update(_subprocess(spec)), rounds=1, iterations=1)
    benchmark.extra_info.update(result, prompt_tokens=PROMPT_TOKENS, new_tokens=NEW_TOKENS, batch=batch,
                                bandwidth_gb_s=round(bandwidth(device) / 1e9, 2))
    table[(device, batch, f"{engine}-{kind}")] = result


if __name__ == "__main__":  # a measuring process: one spec in (JSON), one line of figures out
    spec = json.loads(sys.argv[1])
    if spec.get("task") == "bandwidth":
        print(json.dumps({"bytes_per_s": measure_bandwidth(spec["device"])}))
    else:
        print(json.dumps(measure_case(spec)))
