import pytest

from gpt2tui import GPT2, GPT2Config
from gpt2tui.config import PRESETS
from gpt2tui.errors import ConfigError


def test_124m_preset_has_exactly_openai_parameter_count():
    config = GPT2Config.from_preset("gpt2")
    assert config.n_params() == 124_439_808
    assert GPT2(config).num_params() == 124_439_808


@pytest.mark.parametrize(
    "name, params", [("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)]
)
def test_other_presets_match_openai_sizes(name, params):
    assert GPT2Config.from_preset(name).n_params() == params


def test_presets_have_qkv_bias_and_seed_field_names():
    for name in PRESETS:
        c = GPT2Config.from_preset(name)
        assert c.qkv_bias is True and c.context_length == 1024 and c.vocab_size == 50257
    assert set(GPT2Config().to_dict()) == {
        "vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias", "attn_backend"
    }


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(emb_dim=100, n_heads=3), "divisible"),
        (dict(n_layers=0), "n_layers"),
        (dict(drop_rate=1.5), "drop_rate"),
        (dict(drop_rate="x"), "drop_rate"),  # a hand-edited config.json: a one-line error, not float()'s traceback
        (dict(qkv_bias="false"), "qkv_bias"),  # a truthy string must not silently mean true
        (dict(attn_backend="flash"), "attn_backend"),
    ],
)
def test_invalid_configs_say_what_is_wrong(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        GPT2Config(**kwargs)


def test_unknown_fields_and_presets_are_named():
    with pytest.raises(ConfigError, match="n_embd"):
        GPT2Config.from_dict({"n_embd": 12})
    with pytest.raises(ConfigError, match="gpt3"):
        GPT2Config.from_preset("gpt3")


def test_no_cache_param_count_without_qkv_bias_matches_module():
    config = GPT2Config(vocab_size=100, context_length=16, emb_dim=32, n_heads=4, n_layers=3, qkv_bias=False)
    assert GPT2(config).num_params() == config.n_params()
