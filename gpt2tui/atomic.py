"""Files and directories that appear whole or not at all: checkpoints, LoRA adapters, token shards, exports, curves.

A directory is written into `.NAME.tmp-PID`, synced, then swapped in with two renames: `NAME` → `.NAME.old-PID`,
then `.NAME.tmp-PID` → `NAME`. A process killed between the two leaves no `NAME`; `recover` (run before any read or
write of `NAME`) puts the new one in place, since the first rename happens only once the new one is complete.
"""

from __future__ import annotations

import errno
import os
import secrets
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
    # Preference tuning's: the reference and beta, and the plots `evaluate` draws of preference data.
    "dpo.json", "margin-plot.pdf", "margin-plot.png", "preference-accuracy-plot.pdf", "preference-accuracy-plot.png",
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


def _leftovers(path: Path, kind: str) -> dict[int, Path]:
    """`{pid: .NAME.<kind>-PID}` for the leftovers of processes that are gone (not this one, not a live one)."""
    found = {}
    for entry in path.parent.glob(f".{path.name}.{kind}-*"):
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) and entry.is_dir():
            found[int(pid)] = entry
    return found


def recover(path: str | os.PathLike) -> Path | None:
    """Finish or clean up what a killed `atomic_directory` left beside `path`; returns the directory it put in place,
    if any.

    - No `path`, and a dead process's `.old` and `.tmp`: it was killed between the two renames, after its new
      directory was complete; the new one takes `path`, and the old one goes.
    - No `path` and only an `.old`: the previous version, whose replacement never got in; it comes back.
    - A dead process's `.tmp` otherwise: killed while writing it, so incomplete; removed.
    - A dead process's `.old` beside an existing `path`: killed after the swap, before the clean-up; removed.
    """
    path = _normalized(path)
    if not path.parent.is_dir():
        return None
    tmps, olds = _leftovers(path, "tmp"), _leftovers(path, "old")
    restored = None
    if not path.exists() and not path.is_symlink():
        # Newest first: the highest-numbered pid is no proof of age, a directory's mtime is.
        complete = sorted((p for p in tmps if p in olds), key=lambda p: tmps[p].stat().st_mtime, reverse=True)
        chosen = None
        if complete:
            chosen = tmps.pop(complete[0])
        elif olds:
            chosen = olds.pop(max(olds, key=lambda p: olds[p].stat().st_mtime))
        if chosen is not None:
            try:
                os.replace(chosen, path)
                restored = path
            except OSError:  # another process recovered it first
                pass
    for leftover in (*tmps.values(), *olds.values()):
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)
    return restored


@contextmanager
def naming_errors(path: str | os.PathLike) -> Iterator[None]:
    """Write errors as `OSError`s that name `path`. A failed write names no file of its own ("No space left on
    device"), and writers such as safetensors and `torch.save` raise their own types on a full disk (torch's says
    "unexpected pos 704 vs 598"); the CLI then says which file could not be written and why, in one line."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or str(e), os.fspath(path)) from None
    except Exception as e:
        text = str(e)
        if "No space left" in text or "os error 28" in text or _nearly_full(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path)) from None
        raise


def _nearly_full(path: str | os.PathLike) -> bool:
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


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
    recover(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with naming_errors(path):
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


def _write_new_file(path: Path, text: str) -> None:
    """Create `path` (it must not exist) holding `text`, synced to the disk; removed again if that fails. os.open with
    0o666, not mkstemp's 0o600: the file gets the permissions the user's umask gives any new file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` so that a reader sees the old file or the whole new one, never half of one."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    _write_new_file(tmp, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_new(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a new file at `path`, whole, never replacing a file: `FileExistsError` if one is there, even one
    made a moment ago by another process (two exports to one name never overwrite each other). The folder must exist.

    The text goes to a temporary file first, then is hard-linked as `path`, which fails rather than replaces; where the
    file system has no hard links, `path` is created exclusively and written in place (removed again if that fails)."""
    path = Path(path)
    tmp = _temporary_sibling(path)
    _write_new_file(tmp, text)
    try:
        try:
            os.link(tmp, path)
            return path
        except FileExistsError:
            raise
        except OSError:  # no hard links here (FAT, some network drives): exclusive creation instead
            pass
        _write_new_file(path, text)
        return path
    finally:
        tmp.unlink(missing_ok=True)
