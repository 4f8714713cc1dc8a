"""The `gpt2tui` command, run in-process through `main(argv)`, plus one real subprocess for the no-traceback rule."""

import subprocess
import sys

import pytest
import torch

from gpt2tui import GPT2, GPT2Config, Tokenizer, save_checkpoint
from gpt2tui.cli import main
from gpt2tui.weights import models_dir


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_greedy_generate_gives_transformers_tokens(capsys, hf_small_dir):
    import transformers

    tok = Tokenizer()
    prompt = "In a hole in the ground"
    ids = tok.encode(prompt)
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_small_dir).eval()
    want = hf.generate(torch.tensor([ids]), max_new_tokens=25, do_sample=False, pad_token_id=tok.eot_token)[0, len(ids):]
    want = want.tolist()
    if tok.eot_token in want:
        want = want[: want.index(tok.eot_token)]
    code, out, err = run(capsys, "generate", "--model", str(hf_small_dir), "--temperature", "0", "-n", "25", prompt)
    assert code == 0, err
    assert out == tok.decode(want) + "\n"


def test_generate_reads_the_prompt_from_stdin(capsys, monkeypatch, hf_small_dir):
    code, expected, _ = run(capsys, "generate", "-m", str(hf_small_dir), "-t", "0", "-n", "8", "Piped text")
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("Piped text"))
    code, out, _ = run(capsys, "generate", "-m", str(hf_small_dir), "-t", "0", "-n", "8", "--echo", "-")
    assert code == 0 and out == "Piped text" + expected


def test_sampling_flags_reach_generation(capsys, hf_small_dir):
    args = ["generate", "-m", str(hf_small_dir), "-n", "12", "--temperature", "1.2", "--top-k", "40", "--top-p", "0.95"]
    a = run(capsys, *args, "--seed", "1", "Seeded")[1]
    b = run(capsys, *args, "--seed", "1", "Seeded")[1]
    c = run(capsys, *args, "--seed", "2", "Seeded")[1]
    assert a == b != c


def test_info_prints_config_params_memory_device_and_backend(capsys):
    save_checkpoint(GPT2(GPT2Config(context_length=64, emb_dim=64, n_heads=4, n_layers=2)), models_dir() / "tiny")
    code, out, _ = run(capsys, "info", "--model", "tiny")
    assert code == 0
    n = GPT2Config(context_length=64, emb_dim=64, n_heads=4, n_layers=2).n_params()
    for words in ("emb_dim", "n_layers", f"{n:,}", "fp32 / bf16", "cpu", "sdpa", "every tensor present"):
        assert words in out


def test_info_checks_the_weights_without_loading_them(capsys, tmp_path, monkeypatch):
    from gpt2tui import weights

    path = save_checkpoint(GPT2(GPT2Config(context_length=64, emb_dim=64, n_heads=4, n_layers=2)), tmp_path / "m")
    monkeypatch.setattr(weights, "_build", _counting(weights._build, seen := []))
    assert run(capsys, "info", "--model", str(path))[0] == 0
    assert seen == ["meta"]  # one check, on meta tensors: no values read
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])  # a download cut short
    code, out, err = run(capsys, "info", "--model", str(path))
    assert code == 1 and "emb_dim" in out and "cannot be loaded" in out
    assert "model.safetensors is truncated or corrupt" in err and "Traceback" not in err
    save_checkpoint(GPT2(GPT2Config(context_length=64, emb_dim=32, n_heads=4, n_layers=2)), tmp_path / "other")
    (path / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    code, _, err = run(capsys, "info", "--model", str(path))
    assert code == 1 and "config.json does not match the weights" in err


def _counting(build, seen):
    def wrapped(config, named, *args, **kwargs):
        seen.append(next(iter(named.values()))[1].device.type)
        return build(config, named, *args, **kwargs)

    return wrapped


def test_models_lists_saved_models(capsys):
    assert "No models yet" in run(capsys, "models")[1]
    save_checkpoint(GPT2(GPT2Config(context_length=64, emb_dim=64, n_heads=4, n_layers=2)), models_dir() / "bot")
    code, out, _ = run(capsys, "models")
    assert code == 0 and "bot" in out and "2 × 64" in out


def test_chat_without_a_terminal_replies_to_each_line_and_saves_the_chat(capsys, monkeypatch, hf_small_dir):
    from gpt2tui.store import ChatStore

    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("Hello there\n\n/quit\nnever read\n"))
    code, out, err = run(capsys, "chat", "-m", str(hf_small_dir), "-n", "5", "-t", "0")
    assert code == 0 and "Ctrl+C stops a reply" in err
    with ChatStore() as store:
        (conversation,) = store.conversations()
        messages = [m.to_chat() for m in store.get(conversation.id).messages]
    assert conversation.title == "Hello there" and conversation.settings["max_new_tokens"] == 5
    assert messages[0] == {"role": "user", "content": "Hello there"} and len(messages) == 2  # the empty line is no message
    assert out == messages[1]["content"] + "\n" and messages[1]["finish_reason"] in ("max_tokens", "stop", "eos")


def _reader(lines):
    """`input` for the plain chat: these lines, then end of input."""
    lines = iter(lines)

    def read(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    return read


def test_plain_chat_commands_and_ctrl_c(capsys, tmp_path, monkeypatch, hf_small_dir):
    from gpt2tui.repl import Repl
    from gpt2tui.session import ChatSession, ChatSettings
    from gpt2tui.store import ChatStore

    class StopAfterFirstDelta:
        text = ""

        def write(self, s):
            if s.strip() and not self.text:
                self.text += s
                raise KeyboardInterrupt  # what Ctrl+C does while a reply prints
            self.text += s

        def flush(self):
            pass

    monkeypatch.chdir(tmp_path)
    read = _reader(["First", "/set temperature=0", "/set max_new_tokens=3", "Second", "/export", "/new", "/list",
                    "/set nonsense=1"])
    session = ChatSession.load(str(hf_small_dir))
    out = StopAfterFirstDelta()
    with ChatStore() as store:
        assert Repl(session, store, ChatSettings(max_new_tokens=50), read=read, out=out).run() == 0
        messages = [m.to_chat() for m in store.get(1).messages]
        settings = store.get(1).settings
    err = capsys.readouterr().err
    assert messages[1]["finish_reason"] == "cancelled" and "[stopped]" in out.text
    assert settings["temperature"] == 0 and settings["max_new_tokens"] == 3
    assert messages[3]["finish_reason"] in ("max_tokens", "stop", "eos") and len(messages) == 4
    assert (tmp_path / "chat-1.md").read_text().startswith("# First")
    assert "Exported to" in err and "First" in err and "use /set NAME=VALUE" in err


def test_plain_chat_export_into_a_folder_a_missing_folder_and_a_nul_byte(capsys, tmp_path, monkeypatch, hf_small_dir):
    import io

    from gpt2tui.repl import Repl
    from gpt2tui.session import ChatSession, ChatSettings
    from gpt2tui.store import ChatStore

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    session = ChatSession.load(str(hf_small_dir))
    lines = ["Hello", "/export a\x00b.md", "/export notes/", "/export missing/x.md", "Still here"]
    with ChatStore() as store:
        assert Repl(session, store, ChatSettings(max_new_tokens=2), read=_reader(lines), out=io.StringIO()).run() == 0
        assert [m.content for m in store.get(1).messages][2] == "Still here"  # the chat went on
    err = " ".join(capsys.readouterr().err.split())  # as one line: the console wraps long ones
    assert "NUL byte" in err and "Traceback" not in err
    assert (tmp_path / "notes" / "chat-1.md").read_text().startswith("# Hello")
    # Input piped in: nothing is asked (the next line is a message), so the folder is not made.
    assert "missing does not exist" in err and not (tmp_path / "missing").exists()

    answers = ["Hi", "/export made/x.md", "y"]
    with ChatStore() as store:
        repl = Repl(session, store, ChatSettings(max_new_tokens=2), read=_reader(answers), out=io.StringIO(),
                    interactive=True)
        assert repl.run() == 0
    assert (tmp_path / "made" / "x.md").read_text().startswith("# Hi")


def test_plain_chat_goes_on_when_the_history_cannot_be_saved(capsys, monkeypatch, tmp_path, hf_small_dir):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("XDG_DATA_HOME", str(blocker / "data"))
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("Hello there\n"))
    code, out, err = run(capsys, "chat", "-m", str(hf_small_dir), "-n", "3", "-t", "0")
    err = " ".join(err.split())
    assert code == 0 and "Traceback" not in err and out.strip()
    assert "cannot make the folder" in err and "kept only until you quit" in err and "Chats are kept until you quit" in err


def test_plain_chat_keeps_its_messages_through_a_full_disk(capsys, hf_small_dir):
    """The disk fills while chatting: the chat goes on with its messages in memory, says so once, and writes them
    all once there is space again."""
    import io

    from gpt2tui.repl import Repl
    from gpt2tui.session import ChatSession, ChatSettings
    from gpt2tui.store import ChatStore

    session = ChatSession.load(str(hf_small_dir))
    with ChatStore() as store:
        store.create(title="Earlier")  # the database exists, then the disk fills
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count={pages}")
        long_message = "Tell me everything. " * 400  # more than the pages left

        lines = iter([long_message, "And then?", None, "Last one"])

        def read(prompt):
            line = next(lines, EOFError)
            if line is EOFError:
                raise EOFError
            if line is None:  # the user frees space
                store._db.execute("PRAGMA max_page_count=1073741823")
                return ""
            return line

        repl = Repl(session, store, ChatSettings(max_new_tokens=3), read=read, out=io.StringIO())
        assert repl.run() == 0
        err = " ".join(capsys.readouterr().err.split())
        assert "Traceback" not in err and err.count("disk full:") == 1 and "your reply is kept until you free space" in err
        assert "Saved: the chat history could be written again" in err
        (conversation,) = [c for c in store.conversations() if c.title != "Earlier"]
        stored = [m.to_chat() for m in store.get(conversation.id).messages]
    assert stored == session.messages and [m["role"] for m in stored] == ["user", "assistant"] * 3
    assert stored[0]["content"] == long_message.strip()


def test_plain_chat_says_what_is_lost_when_the_disk_stays_full(capsys, hf_small_dir):
    import io

    from gpt2tui.repl import Repl
    from gpt2tui.session import ChatSession, ChatSettings
    from gpt2tui.store import ChatStore

    session = ChatSession.load(str(hf_small_dir))
    with ChatStore() as store:
        store.create(title="Earlier")
        store._db.execute(f"PRAGMA max_page_count={store._db.execute('PRAGMA page_count').fetchone()[0]}")
        repl = Repl(session, store, ChatSettings(max_new_tokens=2), read=_reader(["x" * 9000, "/new"]),
                    out=io.StringIO())
        assert repl.run() == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "not saved yet" in err and "not saved: disk full:" in err and "are lost" in err and "Traceback" not in err


def test_plain_chat_takes_bytes_that_are_not_utf8(capsys, tmp_path, monkeypatch, hf_small_dir):
    """`printf 'caf\\xe9' | gpt2tui chat`: under a C locale Python reads the byte as a lone surrogate, which can be
    neither tokenised nor stored; it becomes U+FFFD, and the chat goes on."""
    import io

    from gpt2tui.repl import Repl
    from gpt2tui.session import ChatSession, ChatSettings
    from gpt2tui.store import ChatStore

    read = _reader([b"caf\xe9".decode("utf-8", "surrogateescape")])
    session = ChatSession.load(str(hf_small_dir))
    with ChatStore() as store:
        assert Repl(session, store, ChatSettings(max_new_tokens=2), read=read, out=io.StringIO()).run() == 0
        assert store.get(1).messages[0].content == "caf\ufffd"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["generate", "--model", "/no/such/dir", "hi"], "no model directory at /no/such/dir"),
        (["info", "--model", "gpt2"], "gpt2 is not downloaded and the Hub is offline"),
        (["download", "gpt2"], "cannot download gpt2: HF_HUB_OFFLINE is set"),
        (["generate", "--model", "not-a-model", "hi"], "unknown model 'not-a-model'"),
    ],
)
def test_user_errors_are_one_line_with_exit_1(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in " ".join(err.split())
    assert "Traceback" not in err


@pytest.mark.parametrize("device, words", [
    pytest.param("cuda", "no CUDA GPU", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA")),
    pytest.param("mps", "no Apple GPU",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="has an Apple GPU")),
])
def test_a_device_this_machine_lacks_is_one_line(capsys, device, words):
    save_checkpoint(GPT2(GPT2Config(context_length=64, emb_dim=64, n_heads=4, n_layers=2)), models_dir() / "tiny")
    for command in (["info"], ["generate", "hi"]):
        code, out, err = run(capsys, *command, "--model", "tiny", "--device", device)
        assert code == 1 and out == "" and "Traceback" not in err
        assert err.startswith("error: ") and words in " ".join(err.split())


@pytest.mark.parametrize("argv, words", [
    (["generate", "hi", "--seed", str(2**70)], "--seed"),
    (["generate", "hi", "--stop", ""], "--stop: must not be empty"),
    # Devices no machine has are usage errors, answered before torch loads; a GPU that this one lacks is bad input.
    (["info", "--device", "foo"], "'foo' is not a device; use cpu, cuda, cuda:N or mps"),
    (["info", "--device", "meta"], "'meta' is not a device"),
    (["generate", "hi", "--device", "cpu:1"], "'cpu:1': the CPU is one device, cpu"),
    (["chat", "--device", "mps:1"], "a Mac has one Apple GPU"),
    # The chat flags have the settings dialog's bounds and words.
    (["chat", "-t", "100000"], "Temperature must be 0 to 2; got 100,000"),
    (["chat", "--top-k", "-1"], "Top-k must be 0 to 50,257, or empty for off"),
    (["chat", "-n", "0"], "Max new tokens must be 1 to 65,536"),
])
def test_impossible_values_are_refused_by_the_parser(capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_a_device_index_the_cpu_lacks_is_refused_by_the_loader_too():
    from gpt2tui.errors import ConfigError
    from gpt2tui.weights import pick_device

    assert pick_device("cpu:0").type == "cpu"
    with pytest.raises(ConfigError, match="the CPU is one device"):
        pick_device("cpu:1")


@pytest.mark.parametrize("argv, words", [
    (["infp"], "); did you mean info?"),
    (["infp"], "unknown command 'infp' (choose from chat, generate, info, models, download, "),
    (["modles"], "did you mean models?"),
    (["generate", "hi", "--tempreture", "1"], "gpt2tui generate: error: unknown option '--tempreture'; did you mean "
                                              "--temperature?"),
    (["chat", "--sytem=be brief"], "unknown option '--sytem'; did you mean --system?"),
    (["--modle", "x"], "gpt2tui chat: error: unknown option '--modle'; did you mean --model?"),
    (["generate", "hi", "--dtype", "bf16"], "unknown value 'bf16' (choose from float32, bfloat16, float16); did you "
                                            "mean bfloat16?"),
    (["info", "extra"], "unexpected argument 'extra'"),
    (["zzz"], "unknown command 'zzz' (choose from"),
])
def test_usage_errors_are_one_line_with_a_suggestion_and_exit_2(capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert "see gpt2tui" in err and "usage:" not in err and ("did you mean" in err) == (argv[0] != "zzz" and
                                                                                       argv[0] != "info")


def test_generate_says_when_the_context_window_ends_it_early(capsys):
    save_checkpoint(GPT2(GPT2Config(context_length=16, emb_dim=32, n_heads=2, n_layers=1)), models_dir() / "short")
    code, out, err = run(capsys, "generate", "--model", "short", "-n", "100", "--temperature", "0", "Once upon")
    assert code == 0 and out.strip() and "context window of 16 tokens is full" in err


def _model_of(argv):
    from gpt2tui.cli import _apply_prefs, build_parser

    args = build_parser().parse_args(argv)
    _apply_prefs(args)
    return args.model


def test_an_empty_model_variable_means_the_default(monkeypatch):
    monkeypatch.setenv("GPT2TUI_MODEL", "")
    assert _model_of(["generate", "hi"]) == "gpt2"


def test_the_model_comes_from_the_flag_then_the_variable_then_the_config_file(monkeypatch, isolated_home):
    from gpt2tui.prefs import Prefs, save_prefs

    save_prefs(Prefs(model="from-config"))
    assert _model_of(["generate", "hi"]) == _model_of(["info"]) == "from-config"
    monkeypatch.setenv("GPT2TUI_MODEL", "from-variable")
    assert _model_of(["chat"]) == "from-variable"
    assert _model_of(["chat", "--model", "from-flag"]) == "from-flag"


def test_a_config_file_problem_is_a_warning_line_and_the_command_goes_on(capsys, isolated_home):
    from gpt2tui.prefs import config_path

    save_checkpoint(GPT2(GPT2Config(context_length=64, emb_dim=64, n_heads=4, n_layers=2)), models_dir() / "tiny")
    config_path().parent.mkdir(parents=True)
    config_path().write_text('model = "tiny"\ncolour = "blue"\n')
    code, out, err = run(capsys, "info")
    assert code == 0 and "tiny" in out
    assert "warning:" in err and "config.toml: 'colour' is not a preference" in " ".join(err.split())


def test_models_never_imports_torch_and_info_not_the_chat(tmp_path):
    from gpt2tui_testkit import child_env

    save_checkpoint(GPT2(GPT2Config(context_length=64, emb_dim=64, n_heads=4, n_layers=2)), tmp_path / "m")
    code = ("import sys; from gpt2tui.cli import main; main(sys.argv[1:]); "
            "print(sorted(m for m in ('torch', 'gpt2tui.session', 'gpt2tui.generate', 'gpt2tui.tokenizer', "
            "'gpt2tui.repl', 'regex') if m in sys.modules), file=sys.stderr)")
    models = subprocess.run([sys.executable, "-c", code, "models"], capture_output=True, text=True, env=child_env())
    assert models.returncode == 0 and models.stderr.strip().splitlines()[-1] == "[]", models.stderr
    info = subprocess.run([sys.executable, "-c", code, "info", "--model", str(tmp_path / "m")], capture_output=True,
                          text=True, env=child_env())
    assert info.returncode == 0 and info.stderr.strip().splitlines()[-1] == "['torch']", info.stderr


def test_bad_flag_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--top-p", "2", "hi"])
    assert e.value.code == 2 and "--top-p: 2.0 is outside" in capsys.readouterr().err


def test_every_command_has_help(capsys):
    for cmd in ([], ["chat"], ["generate"], ["info"], ["models"], ["download"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0 and "usage: gpt2tui" in capsys.readouterr().out


def test_installed_command_prints_no_traceback_for_a_corrupt_model(tmp_path):
    save_checkpoint(GPT2(GPT2Config(context_length=16, emb_dim=32, n_heads=4, n_layers=1)), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "gpt2tui.cli", "generate", "--model", str(tmp_path / "m"), "hi"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "truncated or corrupt" in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
