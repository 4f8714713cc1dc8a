"""Speculative decoding against the plain `Decoder`: the same tokens when greedy (in float64, so that verifying k+1
tokens at once cannot flip a near-tie that one-at-a-time decoding breaks the other way), the target's distribution
when sampling (the rule checked exactly, then empirically on a tiny vocabulary), and the CLI flags end to end."""

import copy
import dataclasses
import math

import pytest
import torch

from gpt2tui import GPT2, GPT2Config, Tokenizer, generate, save_checkpoint, stream
from gpt2tui.cli import main
from gpt2tui.errors import ConfigError
from gpt2tui.generate import Decoder, SamplingParams, process_logits
from gpt2tui.speculative import (
    PromptLookup,
    Sampling,
    SpeculativeDecoder,
    acceptance,
    lookup,
    residual,
    verify,
)
from gpt2tui.weights import models_dir

EOS = 50256


def _wide(model: GPT2, std: float = 0.1) -> GPT2:
    with torch.no_grad():  # a wide init spreads the logits: varied tokens, no near-ties
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, std)
    return model.eval()


def _model(seed: int, **config) -> GPT2:
    # 4,096 tokens: the common English words' ids fit, and the output head costs an eighth of GPT-2's.
    torch.manual_seed(seed)
    cfg = dict(vocab_size=4096, context_length=64, emb_dim=64, n_heads=4, n_layers=2)
    return _wide(GPT2(GPT2Config(**{**cfg, **config})))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


def _cropped(model: GPT2, context_length: int) -> GPT2:
    """The same weights with a shorter window."""
    short = GPT2(dataclasses.replace(model.config, context_length=context_length)).to(model.dtype)
    state = model.state_dict()
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:context_length]
    short.load_state_dict(state)
    return short.eval()


@pytest.fixture(scope="module")
def models():
    target = _model(0).double()
    near = copy.deepcopy(target)  # agrees with the target on some tokens: runs of accepted drafts, then a rejection
    with torch.no_grad():
        for p in near.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return dict(target=target, same=target, near=near, other=_model(1, n_layers=1).double(), lookup="prompt-lookup",
                short=_cropped(target, 40))


REPETITIVE = [464, 3290, 3332, 319, 262, 2603, 13, 464, 3290, 3332, 319, 262, 2603, 13, 464, 3290]


def _run(decoder) -> list[int]:
    return [step[0] for step in decoder]


def _both(target, draft, prompt, params, k=None, eos=EOS):
    plain = Decoder(target, [prompt], params, eos)
    spec = SpeculativeDecoder(Decoder(target, [prompt], params, eos), draft, k)
    return _run(plain), plain, _run(spec), spec


# -- greedy: the very tokens of Decoder ------------------------------------------------------------------------------


CASES = [(d, k, 1.0) for d in ("other", "same", "near", "lookup") for k in (1, 4)]
CASES += [(d, 3, 1.4) for d in ("other", "same", "near", "lookup")]  # each row's seen tokens include the drafts


@pytest.mark.parametrize("draft, k, penalty", CASES)
def test_greedy_gives_the_decoders_tokens(models, draft, k, penalty):
    params = SamplingParams(max_new_tokens=23, temperature=0, repetition_penalty=penalty)
    want, plain, got, spec = _both(models["target"], models[draft], REPETITIVE, params, k)
    assert got == want and len(got) == 23
    assert spec.finish_reason == plain.finish_reason == ["max_tokens"]
    s = spec.stats
    assert s.tokens == 23 and s.accepted <= s.drafted and s.target_passes == 23 - s.accepted
    if draft == "same":
        assert s.acceptance_rate == 1.0 and s.target_passes == math.ceil(23 / (k + 1))
    if draft in ("near", "lookup") and k > 1 and penalty == 1.0:
        assert 0 < s.accepted < s.drafted  # both branches of the check are exercised


@pytest.mark.parametrize("draft", ["same", "near", "lookup"])
def test_greedy_stops_at_eos_like_the_decoder(models, draft):
    params = SamplingParams(max_new_tokens=30, temperature=0)
    free = _run(Decoder(models["target"], [REPETITIVE], params))
    eos = free[11]  # a token the reply reaches mid-way stands in for <|endoftext|>
    want, plain, got, spec = _both(models["target"], models[draft], REPETITIVE, params, k=4, eos=eos)
    assert got == want == free[: free.index(eos)]
    assert spec.finish_reason == plain.finish_reason == ["eos"]
    assert spec.n_generated == plain.n_generated


@pytest.mark.parametrize("draft", ["same", "lookup", "short"])  # short: a draft whose own window ends first
def test_greedy_fills_the_window_like_the_decoder(models, draft):
    prompt = REPETITIVE * 3  # 48 tokens: cut to 32 so that 100 new tokens would fit, then the window ends it
    params = SamplingParams(max_new_tokens=100, temperature=0)
    want, plain, got, spec = _both(models["target"], models[draft], prompt, params, k=8)
    assert got == want and len(got) == 64 + 1 - 32
    assert spec.finish_reason == plain.finish_reason == ["context_full"]
    assert spec.dropped == plain.dropped == [16] and spec.prompts == plain.prompts


def test_greedy_from_a_one_token_prompt(models):
    want, _, got, _ = _both(models["target"], models["same"], [7], SamplingParams(max_new_tokens=9, temperature=0))
    assert got == want


def test_stop_strings_and_max_tokens_through_generate_and_stream(models, tok):
    target = models["target"]
    text = "The dog sat on the mat. The dog sat on the mat. The dog"
    plain = generate(target, tok, text, max_new_tokens=20, temperature=0)
    stop = plain[8:12]
    want = generate(target, tok, text, max_new_tokens=20, temperature=0, stop=[stop])
    assert want == plain.split(stop)[0]
    for draft in ("same", "near", "lookup"):
        assert generate(target, tok, text, max_new_tokens=20, temperature=0, draft=models[draft]) == plain
        s = stream(target, tok, text, max_new_tokens=20, temperature=0, stop=[stop], draft=models[draft],
                   draft_tokens=5)
        assert "".join(s) == s.text == want and s.finish_reason == "stop"
        assert s.speculation is not None and s.speculation.target_passes > 0
    assert generate(target, tok, [text], max_new_tokens=20, temperature=0, draft="prompt-lookup") == [plain]
    s = stream(target, tok, text, max_new_tokens=20, temperature=0)
    list(s)
    assert s.speculation is None


def test_leaving_the_stream_stops_the_target(models, tok):
    target = models["target"]
    calls = []
    handle = target.transformer.ln_f.register_forward_hook(lambda *a: calls.append(1))
    try:
        s = stream(target, tok, REPETITIVE, max_new_tokens=50, temperature=0, draft=models["other"], draft_tokens=2)
        for i, _ in enumerate(s):
            if i == 2:
                break
    finally:
        handle.remove()
    assert s.finish_reason == "cancelled"
    assert len(calls) <= 4  # prefill and a pass per token at most, not 50


def test_refusals(models, tok):
    target = models["target"]
    params = SamplingParams(max_new_tokens=5, temperature=0)
    with pytest.raises(ValueError, match="one prompt at a time"):
        SpeculativeDecoder(Decoder(target, [[1, 2], [3]], params), "prompt-lookup")
    with pytest.raises(ValueError, match="one prompt at a time"):
        generate(target, tok, ["a", "b"], max_new_tokens=5, draft="prompt-lookup")
    with pytest.raises(ValueError, match=">= 1"):
        SpeculativeDecoder(Decoder(target, [[1, 2]], params), "prompt-lookup", k=0)
    with pytest.raises(ValueError, match="unknown drafter"):
        SpeculativeDecoder(Decoder(target, [[1, 2]], params), "ngram")
    with pytest.raises(ValueError, match="draft_tokens needs a draft"):
        stream(target, tok, "a", draft_tokens=3)
    other_vocab = _model(2, n_layers=1, vocab_size=4100).double()
    with pytest.raises(ConfigError, match="vocabulary"):
        SpeculativeDecoder(Decoder(target, [[1, 2]], params), other_vocab)


def test_max_new_tokens_zero(models):
    spec = SpeculativeDecoder(Decoder(models["target"], [[1, 2]], SamplingParams(max_new_tokens=0)), models["same"])
    assert _run(spec) == [] and spec.finish_reason == ["max_tokens"] and spec.stats.target_passes == 0


def test_prompt_lookup_takes_the_latest_longest_match():
    assert lookup([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], k=2) == [7, 5]
    assert lookup([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], k=9) == [7, 5, 1, 2, 3]  # up to where the text ends
    assert lookup([4, 1, 7, 8, 2, 1], k=2) == [7, 8]  # no 3- or 2-gram recurs; the last token does
    assert lookup([4, 1, 7, 8, 2, 1], k=2, max_ngram=1) == [7, 8]
    assert lookup([5, 6, 7], k=3) == [] and lookup([5], k=3) == []
    with pytest.raises(ValueError):
        PromptLookup(max_ngram=0)


# -- sampling: the target's distribution ------------------------------------------------------------------------------


def _distributions(V: int = 7) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(20):
        p, q = torch.rand(V, generator=g, dtype=torch.float64) ** 3, torch.rand(V, generator=g, dtype=torch.float64) ** 3
        p[torch.randperm(V, generator=g)[:2]] = 0  # tokens top-k or top-p filtered out of the target's distribution
        q[torch.randperm(V, generator=g)[:2]] = 0  # and out of the draft's
        pairs.append((p / p.sum(), q / q.sum()))
    pairs.append((pairs[0][0], pairs[0][0]))  # p == q: always accepted
    x = int(pairs[1][0].argmin())
    pairs.append((pairs[1][0], torch.nn.functional.one_hot(torch.tensor(x), V).double()))  # prompt lookup, p(x) = 0
    pairs.append((pairs[1][0], torch.nn.functional.one_hot(pairs[1][0].argmax(), V).double()))  # one-hot, p(x) > 0
    return pairs


@pytest.mark.parametrize("p, q", _distributions())
def test_the_rule_gives_exactly_p(p, q):
    """P(token = y) = q(y)·min(1, p(y)/q(y)) + P(rejection)·residual(y), summed over the drafts x with q(x) > 0."""
    drawn = q > 0
    kept = torch.zeros_like(p)
    kept[drawn] = q[drawn] * acceptance(p[drawn], q[drawn])  # P(x drafted and kept)
    out = kept + (1 - kept.sum()) * residual(p, q)
    assert torch.allclose(out, p, atol=1e-12, rtol=0)


def _tiny(seed: int) -> GPT2:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=5, context_length=16, emb_dim=16, n_heads=2, n_layers=1)
    return _wide(GPT2(cfg), std=0.25)  # no token near-certain: 4 of the 5 are likely


def _exact_first_two(model: GPT2, prompt: list[int], params: SamplingParams) -> torch.Tensor:
    """P(first token, second token) `(V, V)` of plain sampling, from full forwards through `process_logits`."""
    V = model.config.vocab_size

    def probs(ids: list[int]) -> torch.Tensor:
        seen = torch.zeros(1, V, dtype=torch.bool)
        seen[0, ids] = True
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[:, -1]  # (1, V)
        return torch.softmax(process_logits(logits, params, seen), dim=-1)[0].double()  # (V,)

    first = probs(prompt)
    return torch.stack([first[a] * probs(prompt + [a]) for a in range(V)])  # (V, V)


def _sampled_first_two(target, draft, prompt, params, k, n) -> torch.Tensor:
    V = target.config.vocab_size
    counts = torch.zeros(V, V, dtype=torch.float64)
    for seed in range(n):
        sp = SamplingParams(**{**params.__dict__, "seed": seed})
        tokens = []
        for step in SpeculativeDecoder(Decoder(target, [prompt], sp), draft, k):
            tokens.append(step[0])
            if len(tokens) == 2:
                break
        counts[tokens[0], tokens[1]] += 1
    return counts / n


@pytest.mark.parametrize("drafter", ["model", "prompt-lookup"])
def test_sampling_keeps_the_targets_distribution(drafter):
    target = _tiny(0)
    draft = _tiny(1) if drafter == "model" else drafter
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    # All of the processors, so that p and q are both taken after them, each with its own tokens seen.
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_k=4, repetition_penalty=1.3)
    exact = _exact_first_two(target, prompt, params)
    sampled = _sampled_first_two(target, draft, prompt, params, k=2, n=1000)
    tv = 0.5 * (sampled - exact).abs().sum().item()
    # Sampling noise alone gives a total variation near 0.5·Σ sqrt(2p(1-p)/(πn)) = 0.047 here (fixed seeds: no flakes).
    # Broken rules land at 0.2 or more: always accepting, resampling from p instead of the residual, or (with a draft
    # model) keeping drafts with probability p/q unclipped.
    assert tv < 0.1, (tv, exact, sampled)
    assert (sampled[exact == 0] == 0).all()  # nothing the processors filter out is ever emitted


def test_verify_samples_the_first_token_from_p():
    """One draft from q, checked by `verify`: the token emitted first is distributed as p."""
    sampling = Sampling(Decoder(_tiny(0), [[0]], SamplingParams(temperature=1.0, seed=0)))
    p, q = _distributions(6)[3]
    scores = p.float().log().expand(2, 6)  # (n+1, V): softmax gives p back, 0 as -inf
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(6, dtype=torch.float64)
    n = 4000
    for x in torch.multinomial(q, n, replacement=True, generator=g).tolist():
        a, t = verify(scores, [x], q.float()[None], sampling)
        counts[x if a == 1 else t] += 1
    assert 0.5 * (counts / n - p).abs().sum() < 0.04


# -- the CLI ---------------------------------------------------------------------------------------------------------


def _save(name: str, seed: int, **config) -> None:
    torch.manual_seed(seed)
    cfg = GPT2Config(**{**dict(context_length=64, emb_dim=32, n_heads=2, n_layers=1), **config})
    save_checkpoint(_wide(GPT2(cfg)), models_dir() / name)


def _cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_draft_and_prompt_lookup(capsys):
    _save("tiny", 0)
    _save("tiny-draft", 1)
    base = ["generate", "-m", "tiny", "-n", "12", "Once upon a time, once upon a time"]
    for flags, rate in ((["--draft", "tiny"], "(100%)"), (["--draft", "tiny-draft", "--draft-tokens", "2"], None),
                        (["--prompt-lookup"], None)):
        code, out, err = _cli(capsys, *base, "-t", "0", *flags)
        assert code == 0 and out.strip(), err
        line = err.strip().splitlines()[-1]
        assert line.startswith("speculation: ") and "drafted tokens accepted" in line and "for 12 tokens" in line
        if rate:
            assert rate in line
        seeded = [_cli(capsys, *base, "-t", "1", "--seed", "5", *flags)[1] for _ in range(2)]
        assert seeded[0] == seeded[1] and seeded[0].strip()
    code, out, err = _cli(capsys, *base, "-t", "0")
    assert code == 0 and "speculation" not in err


def test_cli_refusals(capsys):
    _save("tiny", 0)
    _save("padded", 1, vocab_size=50304)
    code, out, err = _cli(capsys, "generate", "-m", "tiny", "--draft", "padded", "hi")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and out == "" and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("error: ") and "vocabulary of 50,304 tokens" in lines[0]
    code, out, err = _cli(capsys, "generate", "-m", "tiny", "--draft-tokens", "3", "hi")
    assert code == 1 and err.startswith("error: --draft-tokens needs --draft MODEL or --prompt-lookup")
    code, _, err = _cli(capsys, "generate", "-m", "tiny", "--draft", "tiny", "--prompt-lookup", "hi")
    assert code == 2 and "not allowed with argument --draft" in err
    code, _, err = _cli(capsys, "generate", "-m", "tiny", "--prompt-lookup", "--draft-tokens", "0", "hi")
    assert code == 2 and "--draft-tokens: 0 is below the minimum 1" in err
