"""Finding models and reading their configs, without torch: where models live, turning a model *name* into a
directory, the Hugging Face cache, and config.json (Hugging Face GPT-2 or our own checkpoint's). `weights.py` loads the
tensors; this module is all that `gpt2tui models` and the app's model list need, so they start without importing torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import recover
from .config import GPT2Config
from .errors import CheckpointError, ConfigError, ModelNotFoundError

FORMAT = "gpt2tui"
# 2: quantised checkpoints (`quantization`). A float checkpoint is still written as 1, which older releases read.
FORMAT_VERSION = 2
ADAPTER_FORMAT = "gpt2tui-lora"  # a LoRA adapter directory written by `gpt2tui finetune --lora`
QUANTIZATIONS = (
    "int8",
    "bfloat16",
)  # what a checkpoint may be stored as: quant.KINDS (a test keeps them equal)
OFFICIAL = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
HF_FILES = ["config.json", "model.safetensors", "generation_config.json"]

GET_WEIGHTS_HINT = "get weights with `gpt2tui download gpt2` (online), or pass the path of a model directory"

# -- where things live -------------------------------------------------------------------------------------------


def data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "gpt2tui"


def models_dir() -> Path:
    """Where `gpt2tui finetune` saves chat-ready models and where a bare name is looked up."""
    return data_dir() / "models"


def hf_cache_dir() -> Path:
    # Read at call time (huggingface_hub reads its variables once at import).
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _has_weights(d: Path) -> bool:
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    return _is_adapter(d) or (d / "config.json").is_file() and any((d / n).is_file() for n in names)


def _is_adapter(d: Path) -> bool:
    return (d / "adapter_config.json").is_file()


# -- resolving a name ----------------------------------------------------------------------------------------------


def cached_official(name: str) -> Path | None:
    """The snapshot directory of an official model in the Hugging Face cache, if its weights are there."""
    from huggingface_hub import snapshot_download  # deferred (~0.3 s): only official names need the Hub

    try:
        path = Path(
            snapshot_download(
                OFFICIAL[name], cache_dir=hf_cache_dir(), allow_patterns=HF_FILES, local_files_only=True
            )
        )
    except Exception:  # not cached: huggingface_hub's exception types vary across its versions
        return None
    return path if _has_weights(path) else None


def _cached_snapshot(name: str) -> Path | None:
    """`cached_official` read straight from the cache's layout (`models--ORG--NAME/refs/main` names the snapshot in
    `snapshots/`, which is what `snapshot_download(local_files_only=True)` reads), without importing huggingface_hub:
    listing the models (`gpt2tui models`, the app's model picker) asks for every official name and loads nothing."""
    repo = hf_cache_dir() / ("models--" + OFFICIAL[name].replace("/", "--"))
    try:
        revision = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not revision or "/" in revision or revision.startswith("."):
        return None
    path = repo / "snapshots" / revision
    return path if _has_weights(path) else None


def download(name: str) -> Path:
    """Fetch an official model's config and safetensors into the Hugging Face cache, with a progress bar."""
    if name not in OFFICIAL:
        raise ModelNotFoundError(f"{name!r} is not an official model; choose one of: {', '.join(OFFICIAL)}")
    if hf_offline():
        raise ModelNotFoundError(
            f"cannot download {name}: HF_HUB_OFFLINE is set; unset it when online, or, without a network, copy a "
            f"GPT-2 directory here and chat with it: gpt2tui --model PATH"
        )
    from huggingface_hub import snapshot_download  # deferred (~0.3 s): only official names need the Hub

    try:
        path = Path(snapshot_download(OFFICIAL[name], cache_dir=hf_cache_dir(), allow_patterns=HF_FILES))
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotFoundError(
            f"could not download {name} from the Hugging Face Hub ({reason[:160]}); check the network, "
            f"or copy a GPT-2 directory here and chat with it: gpt2tui --model PATH"
        ) from None
    if not _has_weights(path):
        raise ModelNotFoundError(f"the download of {name} is incomplete (no weights in {path}); run it again")
    return path


def pending_download(name: str | os.PathLike) -> str | None:
    """The official model that `resolve(name)` would download first (online, not cached, not shadowed by a path
    or a saved model of that name), or None: so a caller can say so before it blocks."""
    text = os.fspath(name)
    if Path(text).expanduser().exists() or (os.sep not in text and (models_dir() / text).is_dir()):
        return None
    official = next((k for k, repo in OFFICIAL.items() if text in (k, repo)), None)
    if official is None or cached_official(official) is not None or hf_offline():
        return None
    return official


def resolve(name: str | os.PathLike, allow_download: bool = True) -> Path:
    """A model name → a directory: an existing path; a model saved under `models_dir()`; an official name
    (`gpt2`, `gpt2-medium`, ...) from the Hugging Face cache, downloaded when not there yet."""
    text = os.fspath(name)
    path = Path(text).expanduser()
    recover(
        path
    )  # a save killed between its two renames left no `path`, but a complete new version beside it
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(
            f"{text} is a file; a model is a directory holding config.json and model.safetensors"
        )
    saved = models_dir() / text
    if os.sep not in text:
        recover(saved)
    if os.sep not in text and saved.is_dir():
        return saved
    official = next((k for k, repo in OFFICIAL.items() if text in (k, repo)), None)
    if official:
        cached = cached_official(official)
        if cached:
            return cached
        if allow_download and not hf_offline():
            return download(official)
        raise ModelNotFoundError(f"{official} is not downloaded and the Hub is offline; {GET_WEIGHTS_HINT}")
    if os.sep in text or text.startswith((".", "~")):
        raise ModelNotFoundError(f"no model directory at {text}; {GET_WEIGHTS_HINT}")
    raise ModelNotFoundError(
        f"unknown model {text!r}: not a directory, not saved in {models_dir()}, and not one of "
        f"{', '.join(OFFICIAL)}; see `gpt2tui models`"
    )


# -- reading files -------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path.parent} has no config.json; a model directory holds config.json and model.safetensors"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and a number of thousands of digits
        reason = (
            "a number in it has thousands of digits"
            if "integer string conversion" in str(e)
            else _first_line(e)
        )
        raise CheckpointError(f"{path} is not valid JSON ({reason}); restore or re-download it") from None
    except RecursionError:
        raise CheckpointError(
            f"{path} is nested too deeply to be a config; restore or re-download it"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def config_from_hf(hf: dict, source: str) -> GPT2Config:
    """Our config from a Hugging Face `GPT2Config` dict, refusing variants this architecture does not compute."""
    if hf.get("model_type") != "gpt2":
        raise ConfigError(
            f"{source}: model_type is {str(hf.get('model_type'))[:40]!r}, but only GPT-2 ('gpt2') "
            "models load here"
        )
    try:  # the sizes first: the checks below compute with them
        config = GPT2Config(
            vocab_size=hf.get("vocab_size", 50257),
            context_length=hf.get("n_positions", hf.get("n_ctx", 1024)),
            emb_dim=hf.get("n_embd", 768),
            n_heads=hf.get("n_head", 12),
            n_layers=hf.get("n_layer", 12),
            drop_rate=hf.get("resid_pdrop", 0.1),
            qkv_bias=True,
        )
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    checks = {
        "activation_function": (hf.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
        "n_inner": (hf.get("n_inner"), (None, 4 * config.emb_dim)),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "add_cross_attention": (hf.get("add_cross_attention", False), (False,)),
        "tie_word_embeddings": (hf.get("tie_word_embeddings", True), (True,)),
    }
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise ConfigError(
                f"{source}: {key}={repr(value)[:40]} is not supported (GPT-2 uses {allowed[0]!r})"
            )
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not abs(eps - 1e-5) <= 1e-12:
        raise ConfigError(f"{source}: layer_norm_epsilon={str(eps)[:40]} is not supported (GPT-2 uses 1e-05)")
    return config


def adapter_meta(directory: Path) -> dict:
    meta = _read_json(directory / "adapter_config.json")
    if meta.get("format") != ADAPTER_FORMAT or not isinstance(meta.get("base"), str):
        raise CheckpointError(f"{directory / 'adapter_config.json'} is not a gpt2tui LoRA adapter")
    return meta


MAX_ADAPTER_CHAIN = 8  # an adapter over an adapter over ... a model: deeper than this is a mistake


def adapter_base(directory: Path) -> Path:
    """The directory an adapter's base names, after checking that following bases from it ends at a model: an
    adapter whose base is itself, or a cycle of them, would otherwise recurse until Python gives up."""
    chain = [directory.resolve()]
    base = resolve(adapter_meta(directory)["base"], allow_download=False)
    current = base
    while _is_adapter(current):
        if current.resolve() in chain:
            names = " → ".join(str(p) for p in [*chain, current.resolve()])
            raise CheckpointError(
                f"{directory}: its adapters name each other as base ({names}); a LoRA adapter's "
                "base must be a model"
            )
        chain.append(current.resolve())
        if len(chain) > MAX_ADAPTER_CHAIN:
            raise CheckpointError(f"{directory}: more than {MAX_ADAPTER_CHAIN} adapters on top of each other")
        current = resolve(adapter_meta(current)["base"], allow_download=False)
    return base


def _our_config(meta: dict, source: str) -> tuple[GPT2Config, str | None, str | None]:
    """The config, chat template and quantisation (None for float weights) of a gpt2tui checkpoint's config.json."""
    meta = dict(meta)
    fmt = meta.pop("format", FORMAT)
    if fmt != FORMAT:
        raise ConfigError(f"{source}: unknown format {str(fmt)[:40]!r}")
    version = meta.pop("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{source}: format_version must be a positive integer, got {str(version)[:40]}")
    if version > FORMAT_VERSION:
        raise ConfigError(
            f"{source} was written by a newer gpt2tui (format_version {version}; this one reads up to "
            f"{FORMAT_VERSION}); upgrade gpt2tui"
        )
    chat_template = meta.pop("chat_template", None)
    if chat_template is not None and not isinstance(chat_template, str):
        raise ConfigError(f"{source}: chat_template must be a template's name")
    quantization = meta.pop("quantization", None)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ConfigError(
            f"{source}: quantization is {str(quantization)[:40]!r}; this gpt2tui reads "
            f"{', '.join(QUANTIZATIONS)} or none"
        )
    return GPT2Config.from_dict(meta, source=source), chat_template, quantization


def read_config(path: str | os.PathLike) -> tuple[GPT2Config, str]:
    """The config of a model directory without reading its weights, and its format (`hf` or `gpt2tui`)."""
    directory = Path(path)
    if _is_adapter(directory):
        return read_config(adapter_base(directory))[0], "lora"
    meta = _read_json(directory / "config.json")
    if "model_type" in meta:
        return config_from_hf(meta, str(directory / "config.json")), "hf"
    return _our_config(meta, str(directory / "config.json"))[0], FORMAT


def read_quantization(path: str | os.PathLike) -> str | None:
    """The kind a checkpoint's weights are stored in (`int8`, `bfloat16`), or None for float weights."""
    directory = Path(path)
    if _is_adapter(directory):
        return None
    meta = _read_json(directory / "config.json")
    return None if "model_type" in meta else _our_config(meta, str(directory / "config.json"))[2]


def local_models() -> list[dict]:
    """Models usable without a download: saved under `models_dir()`, and official ones in the Hugging Face cache."""
    found = []
    root = models_dir()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and _has_weights(d):
                found.append({"name": d.name, "path": d, "source": "saved"})
    for name in OFFICIAL:
        cached = _cached_snapshot(name)
        if cached:
            found.append({"name": name, "path": cached, "source": "hugging face cache"})
    for entry in found:
        try:
            entry["config"] = read_config(entry["path"])[0]
        except Exception as e:  # listed anyway, with what is wrong, so the user can fix or delete it
            entry["error"] = str(e)
    return found
