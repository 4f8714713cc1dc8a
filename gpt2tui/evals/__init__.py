"""Standard evaluations: HellaSwag, LAMBADA and WikiText (`gpt2tui evaluate --task`), and the lm-evaluation-harness
adapter (`gpt2tui evaluate --harness`).

`scoring.py` computes log-likelihoods of continuations, the one thing every task needs; each task module reads its
own data format and turns scores into its metrics by its published method; `tasks.py` runs a task by name. Nothing
here is imported by the chat: the optional `datasets`, `pyarrow` and `lm_eval` are imported only where used.
"""
