"""The packed head's argmax (a greedy step's next tokens without the logits) and float32 packing (`pack_model`): the
kernels against their twin on every instruction set, ties, and a packed model against the plain one it came from."""

from __future__ import annotations

import pytest
import torch

from gpt2tui import quant
from gpt2tui.config import GPT2Config
from gpt2tui.model import GPT2
from gpt2tui.weights import load_model, load_weights, save_checkpoint
from gpt2tui_testkit.hf import write_hf_dir

needs_native = pytest.mark.skipif(quant.native is None, reason="gpt2tui._quant is not built")
ISAS = ("avx512", "avx2", "portable")


def _embedding(kind: str, w: torch.Tensor) -> quant.QuantEmbedding:
    values, scale = quant.quantize_weight(w, kind)
    return quant.QuantEmbedding.from_values(values, scale)


def _native_argmax(emb: quant.QuantEmbedding, h: torch.Tensor, isa: str) -> torch.Tensor:
    out = torch.empty(h.shape[0], dtype=torch.int64)
    quant.native.argmax(
        h.data_ptr(),
        emb.packed.data_ptr(),
        emb.scale.data_ptr(),
        0,
        out.data_ptr(),
        h.shape[0],
        emb.n,
        emb.k,
        quant._NATIVE_TYPE[emb.kind],
        isa=isa,
    )
    return out


@needs_native
@pytest.mark.parametrize("kind", quant.PACKINGS)
@pytest.mark.parametrize(
    "M,N,K", [(1, 70, 16), (2, 64, 33), (3, 1100, 64), (5, 300, 8), (16, 2000, 48), (33, 517, 20)]
)
def test_argmax_is_the_argmax_of_the_product(kind, M, N, K):
    """Every instruction set this CPU runs, on odd shapes: one row, a tile's tail, outputs short of a block, many
    blocks over several tasks with a tail, and rows past one task's 32."""
    g = torch.Generator().manual_seed(M * N + K)
    emb = _embedding(kind, torch.randn(N, K, generator=g))
    h = torch.randn(M, K, generator=g)
    expected = quant.linear(h, emb.packed, emb.scale, None, N).argmax(-1)
    assert torch.equal(emb.argmax(h), expected)
    assert torch.equal(quant.argmax_reference(h.double(), emb.packed, emb.scale.double(), N), expected)
    for isa in ISAS:
        if quant.native.cpu_supports(isa):
            assert torch.equal(_native_argmax(emb, h, isa), expected), isa


@needs_native
def test_equal_logits_give_the_first_index_as_torch_does(monkeypatch):
    """Copies of the winning row in the same block, in another block, and in another task's blocks: the first wins,
    whatever the instruction set or thread count."""
    w = torch.randn(2000, 32) * 0.01
    w[700] = w[1500] = w[710] = w[70] = torch.ones(32)
    emb = _embedding(quant.FLOAT, w)
    h = torch.ones(4, 32)
    assert quant.linear(h, emb.packed, emb.scale, None, 2000).argmax(-1).tolist() == [70] * 4
    for threads in (1, 2, 3):
        monkeypatch.setattr(torch, "get_num_threads", lambda n=threads: n)
        assert emb.argmax(h).tolist() == [70] * 4
    for isa in ISAS:
        if quant.native.cpu_supports(isa):
            assert _native_argmax(emb, h, isa).tolist() == [70] * 4, isa


def test_argmax_twin_runs_where_the_kernels_do_not(monkeypatch):
    emb = _embedding("int8", torch.randn(130, 24))
    h = torch.randn(2, 3, 24)
    native = emb.argmax(h)
    with pytest.raises(ValueError, match="24"):
        quant.argmax(torch.randn(2, 25), emb.packed, emb.scale, emb.n)
    monkeypatch.setenv(quant.ENV_VAR, "reference")
    assert native.shape == (2, 3) and torch.equal(emb.argmax(h), native)


def _tiny(seed=0) -> GPT2:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=300, context_length=64, emb_dim=48, n_heads=4, n_layers=2, drop_rate=0.0)
    return GPT2(cfg).eval()


def test_a_packed_model_computes_what_the_plain_one_does(tmp_path):
    plain, packed = _tiny(), quant.pack_model(_tiny())
    assert quant.packing_of(packed) == quant.FLOAT and quant.quantization_of(packed) is None
    ids = torch.randint(0, 300, (3, 20))
    with torch.no_grad():
        assert torch.allclose(packed(ids), plain(ids), atol=1e-5)
        h = packed.hidden(ids)[:, -1]
        assert torch.equal(packed.greedy(h), packed.head(h).argmax(-1))
        assert torch.equal(plain.greedy(h), plain.head(h).argmax(-1))
    # It saves as the float model it was: no quantisation recorded, the same weights back.
    save_checkpoint(packed, tmp_path / "m")
    loaded = load_weights(tmp_path / "m")
    assert quant.packing_of(loaded) is None
    for name, tensor in plain.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_packing_refuses_twice_other_dtypes_and_training():
    packed = quant.pack_model(_tiny())
    with pytest.raises(quant.QuantizationError, match="already packed"):
        quant.pack_model(packed)
    with pytest.raises(quant.QuantizationError, match="already packed"):
        quant.quantize_model(packed, "int8")
    with pytest.raises(quant.QuantizationError, match="float32 model, not bfloat16"):
        quant.pack_model(_tiny().to(torch.bfloat16))
    with pytest.raises(quant.QuantizationError, match="packed for inference"):
        quant.refuse_training(packed, "finetune")


def test_a_load_with_pack_packs_float32_as_it_reads_and_leaves_quantised_checkpoints_alone(tmp_path):
    hf = write_hf_dir(tmp_path / "hf", seed=0, n_embd=48, n_layer=2, n_head=4, n_positions=64)
    packed, _ = load_model(hf, device="cpu", pack=True)
    plain, _ = load_model(hf, device="cpu")
    assert quant.packing_of(packed) == quant.FLOAT and quant.packing_of(plain) is None
    ids = torch.randint(0, 50257, (2, 9))
    with torch.no_grad():
        assert torch.allclose(packed(ids), plain(ids), atol=1e-5)
    save_checkpoint(quant.quantize_model(plain, "int8"), tmp_path / "q")
    assert quant.packing_of(load_model(tmp_path / "q", device="cpu", pack=True)[0]) == "int8"
    bf16, _ = load_model(hf, device="cpu", dtype=torch.bfloat16, pack=True)  # bfloat16 asked: bfloat16 it is
    assert quant.packing_of(bf16) == "bfloat16"
