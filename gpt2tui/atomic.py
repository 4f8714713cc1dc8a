"""Directories that appear whole or not at all: checkpoints, LoRA adapters, token shards."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError, OutputInTheWayError

# What gpt2tui itself writes into a model directory: a checkpoint or an adapter, the training curves copied beside
# it, and what `gpt2tui evaluate` leaves there. Writing a new model may replace a directory holding only these.
MODEL_DIR_FILES = frozenset({
    "config.json", "model.safetensors", "adapter_config.json", "adapter.safetensors", "metrics.jsonl",
    "evaluation.json", "sample_generations.txt", "loss-plot.pdf", "loss-plot.png", "accuracy-plot.pdf",
})


def _normalized(path: str | os.PathLike) -> Path:
    # abspath, not resolve: ".." and "." get real names (a temporary sibling needs one) and links stay links.
    return Path(os.path.abspath(Path(path).expanduser()))


def _ours(name: str) -> bool:
    # Leftovers of an interrupted atomic write (ours by construction).
    return name.startswith(".") and (".tmp-" in name or ".old-" in name)


def check_replaceable(path: str | os.PathLike, owns: Collection[str] | Callable[[Path], bool], flag: str) -> None:
    """Raise `OutputInTheWayError` unless `path` is absent, or a directory holding only entries gpt2tui writes there
    (`owns`: their names, or a test of each entry). Called before a long run, so it stops before the work, not after;
    `flag` names the option to change in the message."""
    path = _normalized(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise OutputInTheWayError(f"{path} is a file, and the output is a directory; choose another {flag}")
    test = owns if callable(owns) else (lambda entry: entry.name in owns)
    strangers = sorted(e.name for e in path.iterdir() if not _ours(e.name) and not test(e))
    if strangers:
        shown = ", ".join(strangers[:3]) + (f" and {len(strangers) - 3} more" if len(strangers) > 3 else "")
        raise OutputInTheWayError(f"{path} already holds {shown}, which gpt2tui did not write and would delete; "
                                  f"choose another {flag}, or empty that directory first")


def ensure_writable(directory: str | os.PathLike, flag: str) -> Path:
    """Create `directory` (with its parents) and make and remove a file in it: before hours of training whose output
    goes there, not after. Raises `OutputError` naming `flag` when that fails."""
    path = _normalized(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".gpt2tui-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write in {path} ({e.strerror or e}); choose another {flag} or make it writable") \
            from None
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, someone else's
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    # A write killed mid-way (a second Ctrl+C during a save) leaves `.NAME.tmp-PID`: incomplete by construction, so
    # once its process is gone it is removed. (`.NAME.old-PID` may be the only copy of the previous version: kept.)
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | os.PathLike, owns: Collection[str] | Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty temporary sibling of `path` to fill. When the block ends without error its files are synced and
    it takes `path`'s place (the old directory is kept aside until the new one is in), so a crash leaves the old
    directory or the new one, never half of one. On error the temporary is removed and `path` is left as it was.

    Only a directory of what gpt2tui writes there (`owns`, see `check_replaceable`) is replaced; anything else at
    `path` stops the write with `OutputInTheWayError` before it starts."""
    path = _normalized(path)
    check_replaceable(path, owns, "output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        # Some writers (safetensors) create their files 0600; a model directory should be as readable as any file the
        # user makes. The directory's own mode is what the umask gives a new directory, so its rw bits are a file's.
        file_mode = tmp.stat().st_mode & 0o666
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                os.chmod(f, file_mode)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
