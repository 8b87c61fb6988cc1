"""The documentation's code runs: every ```python and ```bash block of
README.md and docs/**/*.md.

Conventions (the docs keep to them; this file implements them):

- ```python and ```bash blocks run; every other info string (```text,
  ```console, ```json, ```toml, ```yaml, ...) is shown and never run. The
  look-alikes ```py, ```sh, ```shell, ... are refused by
  :func:`test_code_block_markers`: a block is either run or plainly text.
- A block whose FIRST line is ``# needs: <reason>`` is not run (a network
  download, a GPU, several machines, hours; ``# needs: a fresh virtual
  environment`` for install commands). The test reports it with a
  :class:`DocsBlockNotRun` warning; a page whose blocks all need something
  is skipped with the reasons. Any other first-line marker (``# skip:``,
  ``# needs a GPU`` without the colon, a ``# needs:`` below the first
  line) is an error of :func:`test_code_block_markers`.
- One test per page, ``test_page[<relative path>]``, so ``-k quickstart``
  selects a page. The blocks of a page run in order in one fresh temporary
  directory holding symlinks ``configs``, ``train``, ``examples`` and
  ``benchmarks`` to the checkout's. All python blocks of a page run in ONE
  fresh interpreter, sharing one namespace; bash blocks run with
  ``bash -euo pipefail`` in the same directory. ``python`` on the PATH is
  this interpreter's (the venv's), PYTHONPATH holds the checkout's root.
- The environment keeps every cache inside the temporary directory and
  the network out: RESNEXT_JAX_HOME, XDG_CACHE_HOME, HF_HOME and
  RESNEXT_JAX_CACHE_DIR point inside it, HF_HUB_OFFLINE=1,
  JAX_PLATFORMS=cpu, MPLBACKEND=Agg.
- A page with a bash block that runs ``python -m train`` (or listed in
  :data:`LONG_PAGES`) is marked ``slow``.
- A failing block fails the page's test with the page, the block's line
  and the tail of its output. Python tracebacks and bash errors carry the
  page's own line numbers.

``test_mkdocs_build`` builds the site with ``mkdocs build --strict`` (it is
skipped where mkdocs is not installed; the ``dev`` extra installs it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Checkout folders a page's commands use by their relative names.
LINKED = ("configs", "train", "examples", "benchmarks")
RUN_LANGUAGES = ("python", "bash")
# Info strings that look runnable but are not run: refused, so that a block
# is never silently left out by a typo.
LOOK_ALIKES = ("py", "python3", "pycon", "ipython", "sh", "shell", "zsh",
               "console-bash")
NEEDS = re.compile(r"^#\s*needs:\s*(?P<reason>\S.*)$")
# What a first-line marker looks like: "# word:" (one lowercase word and a
# colon), or a needs/skip-like word in any case, with or without a colon.
MARKER_LIKE = re.compile(
    r"^#\s*(?:[a-z][\w-]*\s*:|(?i:needs?|skip\w*|requires?|no[-_ ]?(?:test|run)"
    r"|xfail|slow)\b)")
# A page with one of these in a block that runs is slow.
SLOW_COMMAND = re.compile(r"(?:^|[\s;&|(])python3?\s+-m\s+train\b", re.M)
# Pages known to take long although they run no training.
LONG_PAGES: frozenset[str] = frozenset()
# Seconds one block may take before the page fails.
BLOCK_TIMEOUT_S = float(os.environ.get("RESNEXT_JAX_DOCS_BLOCK_TIMEOUT",
                                       "600"))
OUTPUT_TAIL_LINES = 60

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


class DocsBlockNotRun(UserWarning):
    """A docs code block marked ``# needs: <reason>``, shown but not run."""


@dataclasses.dataclass(frozen=True)
class Block:
    page: str      # path relative to the checkout, e.g. "docs/models.md"
    line: int      # line of the first code line (1-based)
    language: str  # the info string's first word, lowercased ("" if none)
    code: str

    @property
    def first_line(self) -> str:
        lines = self.code.splitlines()
        return lines[0].strip() if lines else ""

    @property
    def needs(self) -> str | None:
        """The reason of a ``# needs: <reason>`` first line, else None."""
        match = NEEDS.match(self.first_line)
        return match.group("reason").strip() if match else None

    @property
    def runs(self) -> bool:
        return self.language in RUN_LANGUAGES and self.needs is None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[str]:
    """README.md and every docs/**/*.md, relative to the checkout."""
    found = [ROOT / "README.md"] + sorted(DOCS.rglob("*.md"))
    return [p.relative_to(ROOT).as_posix() for p in found if p.is_file()]


def parse_blocks(page: str) -> list[Block]:
    """The fenced code blocks of ``page``, in order.

    A fence is three or more backticks or tildes, indented or not (inside
    a list or an admonition); it closes with the same character, at least
    as many, and nothing else on the line. The content loses the opening
    fence's indentation.
    """
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match.group("indent"), match.group("fence")
        info = match.group("info").strip()
        if fence[0] == "`" and "`" in info:
            i += 1  # Inline code spanning a line (```x```), not a fence.
            continue
        language = re.match(r"[{.]*([\w+-]*)", info).group(1).lower()
        start, i = i + 1, i + 1
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}"
                             r"[ \t]*$")
        while i < len(lines) and not closing.match(lines[i]):
            i += 1
        if i == len(lines):
            raise ValueError(f"{page}:{start}: the code block opened here "
                             f"({fence}{info}) is never closed.")
        body = [line[len(indent):] if line.startswith(indent)
                else line.lstrip() for line in lines[start:i]]
        blocks.append(Block(page, start + 1, language,
                            "\n".join(body) + "\n"))
        i += 1
    return blocks


def marker_problems(block: Block) -> list[str]:
    """What is wrong with a block's markers and info string."""
    if block.language in LOOK_ALIKES:
        return [f"{block.where}: ```{block.language} is neither run nor "
                "plain text: use ```python or ```bash (run), or ```text "
                "(shown only)."]
    if block.language not in RUN_LANGUAGES:
        return []
    problems = []
    first = block.first_line
    if block.needs is None and MARKER_LIKE.match(first):
        problems.append(
            f"{block.where}: unknown first-line marker {first!r}; the only "
            "marker is '# needs: <reason>' (or make it an ordinary comment).")
    for offset, line in enumerate(block.code.splitlines()[1:], start=1):
        if NEEDS.match(line.strip()):
            problems.append(
                f"{block.where}: '# needs:' on the block's line {offset + 1} "
                "has no effect; it must be the first line.")
    return problems


def is_slow(page: str, blocks: list[Block]) -> bool:
    return page in LONG_PAGES or any(
        b.runs and b.language == "bash" and SLOW_COMMAND.search(b.code)
        for b in blocks)


def parse_ok(page: str) -> bool:
    try:
        parse_blocks(page)
    except ValueError:
        return False
    return True


def _page_params():
    params = []
    for page in pages():
        try:
            blocks = parse_blocks(page)
        except ValueError:
            blocks = []  # test_code_block_markers reports it.
        if parse_ok(page) and not any(b.language in RUN_LANGUAGES
                                      for b in blocks):
            continue  # Prose only (the API reference): nothing to run.
        marks = [pytest.mark.slow] if is_slow(page, blocks) else []
        params.append(pytest.param(page, marks=marks, id=page))
    return params


# ---------------------------------------------------------------------------
# Running a page.

# The interpreter a page's python blocks share. It gets a JSON file of the
# blocks and two pipe descriptors: it reads "<index> <output file>" lines
# from the first, runs that block with stdout and stderr (fd 1 and 2, so
# subprocesses too) in the output file, and answers "ok" or "fail" on the
# second. Each block is compiled with the page as its file name and padded
# to its line in the page, so tracebacks name the page's lines.
_DRIVER = r'''
import builtins, json, os, sys, traceback

blocks_file, control_in, control_out = sys.argv[1], *map(int, sys.argv[2:4])
sys.argv = ["docs"]
sys.path[0] = os.getcwd()  # as `python` started in the page's directory
with open(blocks_file, encoding="utf-8") as f:
    blocks = json.load(f)
namespace = {"__name__": "__main__", "__builtins__": builtins}
commands = os.fdopen(control_in, "r")
answers = os.fdopen(control_out, "w", buffering=1)
for command in commands:
    index, output = command.rstrip("\n").split(" ", 1)
    block = blocks[int(index)]
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    status = "ok"
    try:
        source = "\n" * (block["line"] - 1) + block["code"]
        exec(compile(source, block["path"], "exec"), namespace)
    except SystemExit as e:
        if e.code not in (None, 0):
            print(f"SystemExit({e.code!r})", file=sys.stderr)
            status = "fail"
    except BaseException as e:  # the page's frames only, not this loop's
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        status = "fail"
    sys.stdout.flush()
    sys.stderr.flush()
    answers.write(status + "\n")
'''


def page_environment(tmp: pathlib.Path) -> dict[str, str]:
    """The environment a page's blocks run in (see the module docstring)."""
    env = dict(os.environ)
    # jax's own cache folder (the test session's) would override
    # RESNEXT_JAX_CACHE_DIR in the commands: a page sees a user's setting.
    for name in ("JAX_COMPILATION_CACHE_DIR",
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER",
                 "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        env.pop(name, None)
    cache = tmp / ".cache"
    env.update({
        "PATH": os.pathsep.join([os.path.dirname(sys.executable),
                                 env.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                           else [])),
        "PYTHONUNBUFFERED": "1",
        "RESNEXT_JAX_HOME": str(tmp / ".resnext_jax"),
        "XDG_CACHE_HOME": str(cache),
        "HF_HOME": str(cache / "huggingface"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "RESNEXT_JAX_CACHE_DIR": str(cache / "resnext_jax_xla"),
        "JAX_PLATFORMS": "cpu",
        "MPLBACKEND": "Agg",
    })
    return env


def _tail(path: pathlib.Path, lines: int = OUTPUT_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no output)"
    kept = text.rstrip("\n").splitlines()[-lines:]
    return "\n".join(kept) if kept else "(no output)"


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def _fail(block: Block, what: str, output: pathlib.Path):
    pytest.fail(f"{block.where}: {block.language} block {what}\n"
                f"--- output of {block.where} (last {OUTPUT_TAIL_LINES} "
                f"lines) ---\n{_tail(output)}", pytrace=False)


class _Interpreter:
    """The page's one python process (started on its first python block)."""

    def __init__(self, tmp: pathlib.Path, env: dict, blocks: list[Block]):
        work = tmp / ".docs_test"
        (work / "driver.py").write_text(_DRIVER)
        (work / "blocks.json").write_text(json.dumps(
            [{"path": str(ROOT / b.page), "line": b.line, "code": b.code}
             for b in blocks]))
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self.log = work / "interpreter.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(work / "driver.py"),
                 str(work / "blocks.json"), str(to_child_r),
                 str(from_child_w)],
                cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, pass_fds=(to_child_r, from_child_w),
                start_new_session=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._answers = b""

    def run(self, index: int, output: pathlib.Path) -> str:
        """"ok", "fail", "timeout" or "died"."""
        os.write(self._to_child, f"{index} {output}\n".encode())
        deadline = time.monotonic() + BLOCK_TIMEOUT_S
        while b"\n" not in self._answers:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            ready, _, _ = select.select([self._from_child], [], [],
                                        min(left, 1.0))
            if ready:
                chunk = os.read(self._from_child, 64)
                if not chunk:
                    return "died"
                self._answers += chunk
        answer, self._answers = self._answers.split(b"\n", 1)
        return answer.decode()

    def close(self) -> None:
        os.close(self._to_child)  # The driver's loop ends at EOF.
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(self.process)
        os.close(self._from_child)


def _run_bash(block: Block, tmp: pathlib.Path, env: dict,
              output: pathlib.Path) -> str:
    """"ok", "exit N" or "timeout"."""
    # Padded to its line, with the page as $0: bash's own errors name the
    # page's lines; the ERR trap names the command that failed.
    script = ("trap 'echo \"$0:$LINENO: command failed (exit $?): "
              "$BASH_COMMAND\" >&2' ERR"
              + "\n" * (block.line - 1) + block.code)
    with open(output, "wb") as out:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script, block.page], cwd=tmp,
            env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return "timeout"
    return "ok" if code == 0 else f"exit {code}"


def _report_time(block: Block, started: float) -> None:
    # Captured by pytest: shown with -rP or -s, and beside a failure.
    print(f"{block.where}: {block.language} block, "
          f"{time.monotonic() - started:.1f} s")


@pytest.mark.parametrize("page", _page_params())
def test_page(page, tmp_path):
    """Runs the page's python and bash blocks in order (see the module
    docstring); a failing block fails the page naming its line."""
    blocks = parse_blocks(page)
    runnable = [b for b in blocks if b.language in RUN_LANGUAGES]
    not_run = [b for b in runnable if b.needs is not None]
    for block in not_run:
        # Reported at the block's own line, in pytest's warnings summary.
        warnings.warn_explicit(f"not run, needs {block.needs}",
                               DocsBlockNotRun, block.page, block.line)
    to_run = [b for b in runnable if b.needs is None]
    if not to_run:
        pytest.skip(f"{page}: every block needs something: " + "; ".join(
            f"line {b.line}: {b.needs}" for b in not_run))

    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    (tmp_path / ".docs_test").mkdir()
    env = page_environment(tmp_path)
    interpreter = None
    python_index = {id(b): i for i, b in enumerate(
        b for b in to_run if b.language == "python")}
    try:
        for number, block in enumerate(to_run):
            output = tmp_path / ".docs_test" / f"block{number:03d}.log"
            started = time.monotonic()
            if block.language == "bash":
                status = _run_bash(block, tmp_path, env, output)
                if status == "timeout":
                    _fail(block, f"ran over {BLOCK_TIMEOUT_S:.0f} s", output)
                elif status != "ok":
                    _fail(block, f"failed ({status})", output)
                _report_time(block, started)
                continue
            if interpreter is None:
                interpreter = _Interpreter(
                    tmp_path, env,
                    [b for b in to_run if b.language == "python"])
            status = interpreter.run(python_index[id(block)], output)
            if status == "fail":
                _fail(block, "raised", output)
            elif status == "timeout":
                _fail(block, f"ran over {BLOCK_TIMEOUT_S:.0f} s", output)
            elif status == "died":
                code = interpreter.process.wait()
                log = _tail(interpreter.log)
                _fail(block, f"killed its interpreter (exit {code}; "
                      f"interpreter log: {log})", output)
            _report_time(block, started)
    finally:
        if interpreter is not None:
            interpreter.close()


# ---------------------------------------------------------------------------
# The pages as a whole.

def test_code_block_markers():
    """No block has an unknown first-line marker, a misplaced ``# needs:``
    or a runnable-looking info string that would not run; every fence
    closes."""
    problems = []
    for page in pages():
        try:
            blocks = parse_blocks(page)
        except ValueError as e:
            problems.append(str(e))
            continue
        for block in blocks:
            problems += marker_problems(block)
    assert not problems, "\n".join(problems)


def test_pages_found():
    """The collector sees the README and the docs folder."""
    found = pages()
    assert "README.md" in found
    assert any(p.startswith("docs/") for p in found), found


def test_mkdocs_build(tmp_path):
    """``mkdocs build --strict``: every page in the nav, every link and
    anchor resolves, the API reference renders from the docstrings."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
         str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1", "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, (
        "mkdocs build --strict failed:\n" + textwrap.indent(
            (result.stdout + result.stderr)[-8000:], "  "))
