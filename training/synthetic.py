"""A small SYNTHETIC preference set, for trying `finetune` → `dpo` → `evaluate` end to end without real data.

    python -m gpt2tui.training.synthetic prefs.json            # 200 records, seed 0
    python -m gpt2tui.training.synthetic prefs.json --n 400 --seed 1

Every record is in the book's preference form, `{"instruction", "input", "output", "chosen", "rejected"}`, plus
`"source": "synthetic"`: simple questions (sums, opposites, capitals) whose `output` and `chosen` reply is a polite,
correct sentence and whose `rejected` reply says the same thing rudely, as the book's polite/impolite pairs do. So one
file serves both steps: `finetune` learns `output`, `dpo` learns to prefer the polite form. The rude phrasings are
shared across records, which is what lets a preference learnt on the training pairs carry over to held-out ones.
These records are machine-made: they show that the pipeline works, not how good a model is.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

from gpt2tui.atomic import write_atomic

CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Chile": "Santiago",
    "Greece": "Athens",
}
OPPOSITES = {
    "hot": "cold",
    "up": "down",
    "early": "late",
    "light": "dark",
    "open": "closed",
    "full": "empty",
    "fast": "slow",
    "loud": "quiet",
    "wet": "dry",
    "old": "new",
}
RUDE = [
    "Ugh, fine. {answer}",
    "{answer} Obviously. Stop wasting my time.",
    "Look it up yourself. {answer}",
    "{answer} Even a child knows that.",
    "Whatever. {answer}",
]


def _question(rng: random.Random) -> tuple[str, str, str]:
    """An instruction, its optional input and the polite answer."""
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        return "Add the two numbers.", f"{a} and {b}", f"{a} plus {b} is {a + b}."
    if kind == 1:
        country = rng.choice(list(CAPITALS))
        return f"What is the capital of {country}?", "", f"The capital of {country} is {CAPITALS[country]}."
    word = rng.choice(list(OPPOSITES))
    return "Give the opposite of the word.", word, f"The opposite of {word} is {OPPOSITES[word]}."


def preference_records(n: int = 200, seed: int = 0) -> list[dict]:
    """`n` synthetic preference records (see the module's docstring), the same for the same seed."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        instruction, input_, answer = _question(rng)
        rude = rng.choice(RUDE).replace("{answer}", answer)
        records.append(
            {
                "instruction": instruction,
                "input": input_,
                "output": answer,
                "chosen": answer,
                "rejected": rude,
                "source": "synthetic",
            }
        )
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m gpt2tui.training.synthetic",
        description="Write a small synthetic preference set (JSON) for finetune and dpo.",
    )
    p.add_argument("out", help="the JSON file to write")
    p.add_argument("--n", type=int, default=200, help="records (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    try:
        write_atomic(args.out, json.dumps(preference_records(args.n, args.seed), indent=1) + "\n")
    except OSError as e:
        print(f"error: {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {args.n} synthetic preference records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
