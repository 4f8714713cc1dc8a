"""The decode kernel's launch settings against each other, on a GPU: how its defaults in `kernels/decode.py` were chosen.

    python3 benchmarks/tune_decode.py [--json out.json]

One layer's decode call at batch 1 (H=12, D=64, bfloat16, a 1024-position cache), timed as a generation loop captured
in a CUDA graph runs it (`triton.testing.do_bench_cudagraph`: kernel time, no Python), for every combination of key
block (`BLOCK_N`), smallest split (`MIN_BLOCKS_PER_SPLIT`), smallest cache to split (`MIN_BLOCKS_TO_SPLIT`), occupancy
target (`PROGRAMS_PER_SM`), at 128…1024 cached tokens with `max_len` equal to the length, and at `max_len=None` (the whole cache:
what the graphed decode loop passes). SDPA's call is timed beside them. Each setting's output is checked against the
float32 reference first, so a fast but wrong setting shows as such.
"""

import argparse
import itertools
import json

import torch
import triton.testing

from gpt2tui.kernels import decode
from gpt2tui.kernels.decode import decode_attention
from gpt2tui.kernels.reference import decode_attention_ref
from gpt2tui.kernels.sdpa import decode_attention_sdpa

H, S_MAX, D = 12, 1024, 64
DEVICE = "cuda"
POINTS = [(128, 128), (256, 256), (512, 512), (1024, 1024), (128, None), (1024, None)]  # (cached, max_len)
SETTINGS = {
    "BLOCK_N": (64, 128),
    "MIN_BLOCKS_PER_SPLIT": (1, 2),
    "MIN_BLOCKS_TO_SPLIT": (1, 3),
    "PROGRAMS_PER_SM": (1, 2),
}


def graph_us(fn) -> float:
    with torch.cuda.stream(torch.cuda.Stream()):
        return triton.testing.do_bench_cudagraph(fn, rep=50) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    k, v = (torch.randn(1, H, S_MAX, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    q = torch.randn(1, H, 1, D, device=DEVICE, dtype=torch.bfloat16)
    lens = {n: torch.tensor([n], device=DEVICE, dtype=torch.int32) for n, _ in POINTS}
    want = {n: decode_attention_ref(q.float(), k.float(), v.float(), lens[n]) for n, _ in POINTS}
    defaults = {name: getattr(decode, name) for name in SETTINGS}
    rows = []
    header = ["setting"] + [f"{n}/{'all' if m is None else m}" for n, m in POINTS]
    print(" | ".join(header))
    sdpa = [graph_us(lambda n=n, m=m: decode_attention_sdpa(q, k, v, lens[n], max_len=m)) for n, m in POINTS]
    print(" | ".join(["sdpa"] + [f"{t:.2f}" for t in sdpa]))
    rows.append({"setting": "sdpa", "us": sdpa})
    for values in itertools.product(*SETTINGS.values()):
        setting = dict(zip(SETTINGS, values, strict=True))
        for name, value in setting.items():
            setattr(decode, name, value)
        times, worst = [], 0.0
        for n, m in POINTS:
            out = decode_attention(q, k, v, lens[n], max_len=m)
            worst = max(worst, (out.float() - want[n]).abs().max().item())
            times.append(graph_us(lambda n=n, m=m: decode_attention(q, k, v, lens[n], max_len=m)))
        label = " ".join(f"{name}={value}" for name, value in setting.items())
        print(" | ".join([label] + [f"{t:.2f}" for t in times]) + f" | max err {worst:.1e}", flush=True)
        rows.append({"setting": setting, "us": times, "max_err": worst})
    for name, value in defaults.items():
        setattr(decode, name, value)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "points": POINTS, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
