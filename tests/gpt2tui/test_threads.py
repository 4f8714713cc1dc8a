"""The thread governor: the count follows the cores other processes leave free, within torch's setting, and is
restored when the decode ends. /proc/stat and the clocks are replaced by a scripted machine."""

from __future__ import annotations

import pytest
import torch

from gpt2tui import threads
from gpt2tui.config import GPT2Config
from gpt2tui.generate import Decoder, SamplingParams
from gpt2tui.model import GPT2


class Machine:
    """Four cores; `others` of them busy with other processes, `own` with this one, as time passes."""

    def __init__(self, monkeypatch, cores=4):
        self.now, self.busy, self.own_s, self.cores = 100.0, 0.0, 0.0, cores
        self.others, self.own = 0.0, 1.0
        monkeypatch.setattr(threads, "_cpu_ticks", lambda: (self.busy, self.now * self.cores))
        monkeypatch.setattr(threads, "_own_seconds", lambda: self.own_s)
        monkeypatch.setattr(threads, "_usable_cores", lambda: self.cores)
        monkeypatch.setattr(threads.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(threads, "_last", None)

    def advance(self, seconds):
        self.now += seconds
        self.busy += (self.others + self.own) * seconds
        self.own_s += self.own * seconds


@pytest.fixture
def four_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_threads_follow_the_free_cores_and_are_restored(monkeypatch, four_threads):
    machine = Machine(monkeypatch)
    gov = threads.ThreadGovernor()
    assert gov.enabled and gov.threads == 4
    machine.others = 3.0
    machine.advance(0.06)
    gov.tick()  # the first look comes early
    assert torch.get_num_threads() == 1
    machine.others = 1.2
    machine.advance(0.1)
    gov.tick()  # too soon after the last look: nothing changes
    assert torch.get_num_threads() == 1
    machine.advance(0.2)
    gov.tick()
    assert torch.get_num_threads() == 3  # 4 − 1.2 = 2.8 free
    machine.others = 0.0
    machine.advance(0.3)
    gov.tick()
    assert torch.get_num_threads() == 4  # never above torch's own setting
    gov.close()
    assert torch.get_num_threads() == 4


def test_a_new_decode_starts_from_the_last_count(monkeypatch, four_threads):
    machine = Machine(monkeypatch)
    gov = threads.ThreadGovernor()
    machine.others = 3.5
    machine.advance(0.1)
    gov.tick()
    gov.close()
    assert torch.get_num_threads() == 4
    soon = threads.ThreadGovernor()
    assert soon.threads == 1  # soon after: the busy machine is remembered
    soon.close()
    machine.advance(threads.REMEMBER_S + 1)
    assert threads.ThreadGovernor().threads == 4


def test_fixed_count_from_the_environment(monkeypatch, four_threads):
    Machine(monkeypatch)
    monkeypatch.setenv(threads.ENV_VAR, "2")
    gov = threads.ThreadGovernor()
    assert not gov.enabled and torch.get_num_threads() == 2
    gov.close()
    assert torch.get_num_threads() == 4
    monkeypatch.setenv(threads.ENV_VAR, "lots")
    with pytest.raises(ValueError, match="GPT2TUI_THREADS"):
        threads.ThreadGovernor()


def test_without_proc_stat_nothing_changes(monkeypatch, four_threads):
    monkeypatch.setattr(threads, "_cpu_ticks", lambda: None)
    gov = threads.ThreadGovernor()
    gov.tick()
    assert not gov.enabled and torch.get_num_threads() == 4


def test_a_decode_restores_the_count_even_when_left_early(monkeypatch, four_threads):
    machine = Machine(monkeypatch)
    machine.others = 3.0
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=64, context_length=32, emb_dim=16, n_heads=2, n_layers=1)).eval()
    decoder = iter(Decoder(model, [[1, 2, 3]], SamplingParams(max_new_tokens=20, temperature=0)))
    next(decoder)
    machine.advance(0.3)
    next(decoder)
    next(decoder)
    assert torch.get_num_threads() == 1
    decoder.close()
    assert torch.get_num_threads() == 4


def test_reading_the_real_proc_stat():
    ticks = threads._cpu_ticks()
    if ticks is None:
        pytest.skip("no /proc/stat here")
    busy, total = ticks
    assert 0 <= busy <= total
