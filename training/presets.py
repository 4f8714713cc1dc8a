"""Model shapes `gpt2tui pretrain --preset` offers: small ones for trying things out on a laptop, beside the official
four from gpt2tui.config. Torch-free, like the command line that lists them."""

from gpt2tui.config import PRESETS

TRAIN_PRESETS = {
    "tiny": dict(emb_dim=128, n_heads=4, n_layers=4, context_length=256),  # ~7M parameters, mostly the embedding
    "mini": dict(emb_dim=384, n_heads=6, n_layers=6, context_length=512),  # ~30M
}
PRESET_NAMES = [*TRAIN_PRESETS, *PRESETS]
