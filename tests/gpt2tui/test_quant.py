"""Packed int8/bfloat16/float32 weights: the C++ kernels against their PyTorch twin in float64, quantisation itself, whole
models against their float originals, and quantised checkpoints saved and loaded."""

from __future__ import annotations

import json

import pytest
import torch

from gpt2tui import quant
from gpt2tui.config import GPT2Config
from gpt2tui.errors import CheckpointError, ConfigError
from gpt2tui.generate import Decoder, SamplingParams
from gpt2tui.model import GPT2
from gpt2tui.weights import load_weights, read_quantization, save_checkpoint
from gpt2tui_testkit.hf import write_hf_dir

needs_native = pytest.mark.skipif(quant.native is None, reason="gpt2tui._quant is not built")
# Odd shapes: a single row, rows past a tile of 3, outputs short of a block, outputs over many blocks with a tail,
# a reduction shorter than one chunk of 32 and one that is not a multiple of it.
SHAPES = [(1, 64, 32), (1, 37, 17), (2, 65, 70), (3, 130, 96), (4, 200, 33), (7, 2304, 96), (37, 100, 768)]


def _layer(kind, N, K, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * 0.05
    b = torch.randn(N, generator=g) if bias else None
    values, scale = quant.quantize_weight(w, kind)
    return w, quant.QuantLinear.from_values(values, scale, b)


def _error(out: torch.Tensor, exact: torch.Tensor) -> float:
    return (out.double() - exact).abs().max().item()


@needs_native
@pytest.mark.parametrize("kind", quant.PACKINGS)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_native_linear_is_as_accurate_as_torch_float32(kind, M, N, K):
    """flash-attention's rule: against the float64 reference, within 2× of the error PyTorch's own float32 product
    of the same dequantised weight makes (plus a floor for sums short enough to be exact)."""
    _, layer = _layer(kind, N, K, bias=M % 2 == 0, seed=M * N + K)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(K))
    bias64 = None if layer.bias is None else layer.bias.double()
    exact = quant.linear_reference(x.double(), layer.packed, layer.scale.double(), bias64, N)
    torch_f32 = quant.linear_reference(x, layer.packed, layer.scale, layer.bias, N)
    ours = layer(x)
    assert ours.dtype == torch.float32 and ours.shape == (M, N)
    assert _error(ours, exact) <= 2 * _error(torch_f32, exact) + 1e-6


@needs_native
@pytest.mark.parametrize("kind", quant.PACKINGS)
def test_every_instruction_set_and_thread_count_agrees(kind, monkeypatch):
    """The AVX-512, AVX2 and portable paths (those this CPU runs) against each other and the twin; threads split
    outputs, never a sum, so every thread count gives identical bits."""
    N, K, M = 300, 200, 5
    _, layer = _layer(kind, N, K)
    x = torch.randn(M, K)
    y_threads = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(torch, "get_num_threads", lambda n=threads: n)
        y_threads.append(layer(x))
    assert all(torch.equal(y_threads[0], y) for y in y_threads[1:])
    exact = quant.linear_reference(x.double(), layer.packed, layer.scale.double(), layer.bias.double(), N)
    for isa in ("avx512", "avx2", "portable"):
        if not quant.native.cpu_supports(isa):
            continue
        y = torch.empty(M, N)
        quant.native.linear(x.data_ptr(), layer.packed.data_ptr(), layer.scale.data_ptr(), layer.bias.data_ptr(),
                            y.data_ptr(), M, N, K, quant._NATIVE_TYPE[kind], isa=isa)
        assert _error(y, exact) <= 2e-6, isa
    with pytest.raises(ValueError, match="does not run"):
        quant.native.linear(0, 0, 0, 0, 0, 1, 1, 1, 0, isa="sve")


def test_leading_dimensions_and_empty_batches(monkeypatch):
    _, layer = _layer("int8", 50, 40)
    x = torch.randn(2, 3, 40)
    assert layer(x).shape == (2, 3, 50)
    assert torch.allclose(layer(x)[1, 2], layer(x[1, 2]), atol=1e-6)
    assert layer(torch.randn(0, 40)).shape == (0, 50)
    monkeypatch.setenv(quant.ENV_VAR, "reference")
    assert torch.allclose(layer(x), layer.forward(x), atol=1e-6)


def test_wrong_sizes_and_ids_are_errors_not_reads_past_the_weight():
    _, layer = _layer("int8", 50, 40)
    with pytest.raises(ValueError, match="40"):
        layer(torch.randn(2, 41))
    values, scale = quant.quantize_weight(torch.randn(70, 8), "int8")
    emb = quant.QuantEmbedding.from_values(values, scale)
    for bad in (70, 127, -1):
        with pytest.raises(IndexError, match="out of range"):
            emb(torch.tensor([[1, bad]]))


def test_int8_quantisation_is_symmetric_per_channel():
    w = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -3.0]])
    q, scale = quant.quantize_weight(w, "int8")
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert torch.equal(q[0], torch.tensor([64, -127, 32], dtype=torch.int8))  # 0.5 / (1/127) = 63.5 → 64
    assert torch.equal(q[1], torch.zeros(3, dtype=torch.int8)) and scale[1] > 0
    assert q.abs().max() == 127
    assert (q.float() * scale[:, None] - w).abs().max() <= scale.max() / 2 + 1e-7


def test_pack_and_unpack_are_inverse():
    values = torch.arange(70 * 9, dtype=torch.int32).view(70, 9).to(torch.int8)
    packed = quant.pack(values)
    assert packed.shape == (2, 9, 64)
    assert torch.equal(quant.unpack(packed, 70), values)
    assert packed[1, 4, 5] == values[64 + 5, 4]  # block 1, column 4, lane 5


@pytest.mark.parametrize("kind", quant.PACKINGS)
def test_embedding_rows_and_tied_head(kind):
    w = torch.randn(130, 24) * 0.05
    values, scale = quant.quantize_weight(w, kind)
    emb = quant.QuantEmbedding.from_values(values, scale)
    ids = torch.tensor([[0, 63, 64, 129], [5, 5, 100, 1]])
    rows = emb(ids)
    assert rows.shape == (2, 4, 24)
    assert torch.equal(rows, quant.embedding_reference(ids, emb.packed, emb.scale))
    assert torch.allclose(rows, emb.dequantized()[ids], atol=0)
    h = torch.randn(3, 24)
    assert torch.allclose(emb.logits(h), h @ emb.dequantized().T, atol=1e-5)


def _tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=300, context_length=64, emb_dim=48, n_heads=4, n_layers=2, drop_rate=0.0)
    model = GPT2(GPT2Config(**{**cfg, **overrides})).eval()
    with torch.no_grad():  # wide weights: logits far apart, so rounding cannot flip a greedy choice by a near-tie
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    return model


@pytest.mark.parametrize("kind", quant.KINDS)
def test_quantized_model_tracks_the_float_one(kind):
    model = _tiny()
    ids = torch.randint(0, 300, (2, 20))
    float_logits = model(ids)
    q = quant.quantize_model(_tiny(), kind)
    assert quant.quantization_of(q) == kind and q.dtype == torch.float32
    q_logits = q(ids)
    agree = (q_logits.argmax(-1) == float_logits.argmax(-1)).float().mean().item()
    assert agree >= 0.95
    rel = ((q_logits - float_logits).norm() / float_logits.norm()).item()
    assert rel < (0.02 if kind == "int8" else 0.005)
    # The KV-cached engine runs on it as on any model, and matches a full forward of the same packed weights.
    params = SamplingParams(max_new_tokens=8, temperature=0, stop_at_eos=False)
    out = [step[0] for step in Decoder(q, [[1, 2, 3]], params)]
    seq = [1, 2, 3]
    for _ in range(8):
        seq.append(int(q(torch.tensor([seq]))[0, -1].argmax()))
    assert out == seq[3:]


def test_quantized_model_refuses_training_and_a_second_quantisation():
    q = quant.quantize_model(_tiny(), "int8")
    with pytest.raises(quant.QuantizationError, match="already quantised"):
        quant.quantize_model(q, "bfloat16")
    with pytest.raises(quant.QuantizationError, match="needs float weights"):
        quant.refuse_training(q, "finetune")
    with pytest.raises(quant.QuantizationError, match="unknown quantization"):
        quant.check_kind("int4")


@pytest.mark.parametrize("kind", quant.KINDS)
def test_quantized_checkpoint_round_trip(tmp_path, kind):
    q = quant.quantize_model(_tiny(), kind)
    save_checkpoint(q, tmp_path / "m", chat_template="alpaca")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["quantization"] == kind and meta["format_version"] == 2
    assert read_quantization(tmp_path / "m") == kind
    loaded = load_weights(tmp_path / "m")
    assert quant.quantization_of(loaded) == kind and loaded.chat_template == "alpaca"
    ids = torch.randint(0, 300, (1, 10))
    assert torch.equal(loaded(ids), q(ids))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        weight = f.get_tensor("transformer.h.0.mlp.c_fc.weight")
    assert weight.dtype == (torch.int8 if kind == "int8" else torch.bfloat16) and weight.shape == (192, 48)
    assert ("transformer.h.0.mlp.c_fc.weight_scale" in keys) == (kind == "int8")
    assert load_weights(tmp_path / "m", shapes_only=True).device.type == "meta"


def test_float_checkpoints_stay_format_1(tmp_path):
    save_checkpoint(_tiny(), tmp_path / "f")
    assert json.loads((tmp_path / "f" / "config.json").read_text())["format_version"] == 1
    assert read_quantization(tmp_path / "f") is None


def test_quantising_load_of_a_hugging_face_folder(tmp_path):
    write_hf_dir(tmp_path / "hf", n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=500)
    float_model = load_weights(tmp_path / "hf")
    q = load_weights(tmp_path / "hf", quantize="int8")
    assert quant.quantization_of(q) == "int8"
    ids = torch.randint(0, 500, (1, 16))
    rel = ((q(ids) - float_model(ids)).norm() / float_model(ids).norm()).item()
    assert rel < 0.02
    # The same as quantising the loaded float model: packing while reading changes nothing.
    assert torch.equal(q(ids), quant.quantize_model(float_model, "int8")(ids))


def test_quantising_load_of_a_pickle_folder(tmp_path):
    write_hf_dir(tmp_path / "hf", safe=False, n_embd=64, n_layer=1, n_head=4, n_positions=64, vocab_size=500)
    q = load_weights(tmp_path / "hf", quantize="bfloat16")
    assert quant.quantization_of(q) == "bfloat16"


def test_damaged_quantized_checkpoints_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    save_checkpoint(quant.quantize_model(_tiny(), "int8"), tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    state = load_file(str(path))
    state["transformer.h.1.attn.c_proj.weight_scale"][3] = 0.0
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="not positive"):
        load_weights(tmp_path / "m")
    state["transformer.h.1.attn.c_proj.weight_scale"][3] = 0.1
    state["transformer.h.1.attn.c_proj.weight"] = state["transformer.h.1.attn.c_proj.weight"].float()
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="float32"):
        load_weights(tmp_path / "m")
    with pytest.raises(ConfigError, match="already quantised"):
        load_weights(tmp_path / "m", quantize="bfloat16")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**meta, "quantization": "int3"}))
    with pytest.raises(ConfigError, match="int3"):
        load_weights(tmp_path / "m")


def test_int8_tensor_in_a_float_checkpoint_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    save_checkpoint(_tiny(), tmp_path / "f")
    path = tmp_path / "f" / "model.safetensors"
    state = load_file(str(path))
    state["transformer.h.0.mlp.c_fc.weight"] = state["transformer.h.0.mlp.c_fc.weight"].to(torch.int8)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="int8"):
        load_weights(tmp_path / "f")


# -- the command line --------------------------------------------------------------------------------------------------


def _run(capsys, *argv):
    from gpt2tui.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_with_int8_and_bfloat16_weights(capsys, hf_small_dir):
    base = ["generate", "-m", str(hf_small_dir), "-t", "0", "-n", "12", "Once upon a time"]
    code, float_out, err = _run(capsys, *base)
    assert code == 0, err
    for flags in (["--quantize", "int8"], ["--dtype", "bfloat16"], ["--quantize", "bfloat16"]):
        code, out, err = _run(capsys, *base, *flags)
        assert code == 0 and out.strip(), err
    # the wide-init test model's logits are far apart: the rounding of bfloat16 weights does not change the text
    assert _run(capsys, *base, "--dtype", "bfloat16")[1] == float_out


def test_info_shows_a_quantised_checkpoint(capsys, tmp_path):
    save_checkpoint(quant.quantize_model(_tiny(), "int8"), tmp_path / "q")
    code, out, err = _run(capsys, "info", "--model", str(tmp_path / "q"), "--check")
    assert code == 0, err
    assert "int8" in out and "stored as" in out and "every value read" in out


def test_finetuning_a_quantised_model_says_why_not(capsys, tmp_path):
    import json as _json

    save_checkpoint(quant.quantize_model(_tiny(), "int8"), tmp_path / "q")
    data = tmp_path / "data.json"
    data.write_text(_json.dumps([{"instruction": "Say hi", "input": "", "output": "hi"}] * 8))
    code, _, err = _run(capsys, "finetune", "--base", str(tmp_path / "q"), "--data", str(data),
                        "--out", str(tmp_path / "out"), "--epochs", "1")
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "quantised to int8" in lines[0] and "Traceback" not in err


def test_evaluate_scores_the_quantised_model(capsys, tmp_path):
    save_checkpoint(_tiny(vocab_size=50257, emb_dim=32, n_heads=2), tmp_path / "m")
    text = tmp_path / "story.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    reports = {}
    for flags in ([], ["--quantize", "int8"]):
        out = tmp_path / f"out{len(flags)}"
        code, _, err = _run(capsys, "evaluate", "--model", str(tmp_path / "m"), "--data", str(text), "--out", str(out),
                            "--samples", "1", "--max-new-tokens", "4", "--max-batches", "2", *flags)
        assert code == 0, err
        reports[len(flags)] = json.loads((out / "evaluation.json").read_text())
    assert reports[0]["quantization"] is None and reports[2]["quantization"] == "int8"
    float_loss, int8_loss = reports[0]["splits"]["val"]["loss"], reports[2]["splits"]["val"]["loss"]
    assert int8_loss == pytest.approx(float_loss, rel=0.05)


# -- torch.compile ---------------------------------------------------------------------------------------------------


def test_compiled_quantised_model_has_no_graph_breaks():
    """Under torch.compile the packed products are the custom ops torch.ops.gpt2tui.packed_linear/_embedding: one
    graph for a forward, and for a KV-cached step, with the eager results."""
    from gpt2tui.cache import KVCache

    model = quant.quantize_model(_tiny(attn_backend="sdpa"), "int8")
    ids = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(ids)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        assert torch.allclose(compiled(ids), model(ids), atol=1e-6)

        def step(next_ids, cache):
            return model.head(model.hidden(next_ids, cache)[:, -1])

        eager_cache, compiled_cache = KVCache.for_model(model, 2, 32), KVCache.for_model(model, 2, 32)
        model.hidden(ids, eager_cache)
        model.hidden(ids, compiled_cache)
        nxt = torch.tensor([[5], [7]])
        assert torch._dynamo.explain(step)(nxt, KVCache.for_model(model, 2, 32)).graph_break_count == 0
        compiled_step = torch.compile(step, fullgraph=True, backend="aot_eager")
        assert torch.allclose(compiled_step(nxt, compiled_cache), step(nxt, eager_cache), atol=1e-6)
    assert hasattr(torch.ops.gpt2tui, "packed_linear") and hasattr(torch.ops.gpt2tui, "packed_embedding")
