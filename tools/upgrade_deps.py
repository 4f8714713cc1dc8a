"""`make upgrade-deps`: try the newest versions of every dependency, and pin them only if the whole suite passes.

1. A fresh venv of its own (`.venv-upgrade`), so the working `.venv` and its editable link tree are never touched.
2. The newest versions the registries serve of everything `.[dev]` needs (torch stays at the Makefile's pin), and
   gpt2tui itself as a regular install.
3. The whole suite, from the repository root, as `make test` runs it.
4. Green: `constraints.txt` is rewritten (atomically) from that venv's `pip freeze`, and the changes are listed. Red,
   or an install that failed: `constraints.txt` is left as it is, and the failing tests are named.

The functions that turn pip's and pytest's output into pins and test names are tested in tests/test_upgrade_deps.py.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-upgrade"
HEADER = """\
# The exact versions the whole test suite last passed with. `make chat` and `make test` install with
# `pip install -c constraints.txt`, so an outside release never changes what CI runs; setup.py keeps ranges.
# Written by `make upgrade-deps` (tools/upgrade_deps.py) after a green suite: {when}, Python {python}.
"""
# The project itself, and pins with a local label (torch's `+cpu`): the Makefile pins torch, and a local label names one
# index's build, which another machine's index may not have.
_SKIP = {"gpt2tui"}


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~@ \[;]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def constraints_from_freeze(freeze: str) -> dict[str, str]:
    """`{name: "name==version"}` from `pip freeze` output: exact pins only, the project's own line and editable or
    URL installs left out, local version labels (`+cpu`) dropped."""
    pins = {}
    for line in freeze.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-e ", "--")) or " @ " in line or "==" not in line:
            continue
        name, version = line.split("==", 1)
        if _name(name) in _SKIP:
            continue
        pins[_name(name)] = f"{name}=={version.split('+', 1)[0]}"
    return pins


def read_constraints(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return constraints_from_freeze(path.read_text(encoding="utf-8"))


def render(pins: dict[str, str], when: str, python: str) -> str:
    return HEADER.format(when=when, python=python) + "".join(f"{pins[name]}\n" for name in sorted(pins))


def changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One line per package added, removed or moved to another version."""
    lines = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name, "").partition("==")[2], new.get(name, "").partition("==")[2]
        if before != after:
            lines.append(f"  {name}: {before or '(none)'} -> {after or '(removed)'}")
    return lines


def failed_tests(pytest_output: str) -> list[str]:
    """The node ids pytest's short summary names as failed or in error."""
    return [m.group(2) for m in re.finditer(r"^(FAILED|ERROR) (\S+)", pytest_output, re.M)]


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _run(cmd: list[str], what: str, log: Path) -> subprocess.CompletedProcess:
    print(f"upgrade-deps: {what}", flush=True)
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        return subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default="torch==2.13.0", help="the torch requirement, as the Makefile pins it")
    parser.add_argument("--constraints", default="constraints.txt", help="the file to rewrite when the suite is green")
    parser.add_argument("--python", default=sys.executable, help="the Python to make the venv with")
    args = parser.parse_args(argv)
    constraints = ROOT / args.constraints

    shutil.rmtree(VENV, ignore_errors=True)
    print("upgrade-deps: a fresh venv in .venv-upgrade", flush=True)
    made = subprocess.run([args.python, "-m", "venv", str(VENV)], capture_output=True, text=True)
    if made.returncode != 0:
        print(f"upgrade-deps: cannot make a venv: {made.stderr.strip()}; {args.constraints} is unchanged",
              file=sys.stderr)
        return 1
    log = VENV / "upgrade.log"
    py = str(VENV / "bin" / "python")
    steps = [
        ([py, "-m", "pip", "install", "-q", "--upgrade", "pip", "setuptools", "wheel", "pybind11", args.torch],
         "the newest build tools"),
        ([py, "-m", "pip", "install", "-q", "--upgrade", "--upgrade-strategy", "eager", "--no-build-isolation",
          ".[dev]", args.torch], "the newest versions of every dependency, and gpt2tui"),
    ]
    for cmd, what in steps:
        if _run(cmd, what, log).returncode != 0:
            print(f"upgrade-deps: installing {what} failed (see {log.relative_to(ROOT)}); "
                  f"{args.constraints} is unchanged", file=sys.stderr)
            return 1

    print("upgrade-deps: the whole suite, on the newest versions", flush=True)
    suite = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "tests"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (VENV / "pytest.log").write_text(suite.stdout, encoding="utf-8")
    summary = suite.stdout.strip().splitlines()[-1:] or ["(no output)"]
    if suite.returncode != 0:
        broken = failed_tests(suite.stdout)
        print(f"upgrade-deps: the suite is red on the newest versions ({summary[0]}); {args.constraints} is unchanged.",
              file=sys.stderr)
        for test in broken[:50]:
            print(f"  broke: {test}", file=sys.stderr)
        if len(broken) > 50:
            print(f"  ... and {len(broken) - 50} more", file=sys.stderr)
        print(f"  the whole output: {(VENV / 'pytest.log').relative_to(ROOT)}", file=sys.stderr)
        return 1

    freeze = subprocess.run([py, "-m", "pip", "freeze", "--all"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    old, new = read_constraints(constraints), constraints_from_freeze(freeze)
    when = datetime.date.today().isoformat()
    write_atomically(constraints, render(new, when, platform.python_version()))
    moved = changes(old, new)
    print(f"upgrade-deps: the suite is green ({summary[0]}); {args.constraints} rewritten, "
          f"{len(moved)} change{'s' if len(moved) != 1 else ''}:" if moved else
          f"upgrade-deps: the suite is green ({summary[0]}); the pins were already the newest")
    for line in moved:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
