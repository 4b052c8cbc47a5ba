"""The documentation runs: README.md and every page of docs/.

- Every ```python block is executed: a file's blocks in order, in one namespace, in a temporary
  working directory, with one torch thread. A block that cannot run here (it needs a GPU or
  CIFAR's files) is fenced ```python no-run and starts with a comment saying why: it is only
  compiled. Such blocks must stay few.
- Every `fastadv ...` line of the other blocks (```bash, ```sh, ```text, bare ```), and
  `torchrun ... -m fastadv.cli ...`, is parsed by the command's own parser without running it;
  a train line's settings go through TrainConfig.resolved() and a reproduce line's claims must
  exist, so a renamed flag, method or claim fails here.
- Every relative link points to a file that exists and, for a markdown file, to a heading in it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON_OPTIONS = {"no-run"}
MAX_NO_RUN = 3  # blocks that cannot run on a CPU-only machine; more would leave the docs untested


@dataclasses.dataclass
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line
    language: str
    options: tuple
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file (fences at the start of a line)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r"^(`{3,})(.*)$", lines[i])
        if not opening:
            i += 1
            continue
        fence, info = opening.group(1), opening.group(2).split()
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != fence:
            end += 1
        assert end < len(lines), f"{path.relative_to(ROOT)}:{i + 1}: a code block that is never closed"
        blocks.append(Block(path, i + 2, info[0] if info else "", tuple(info[1:]), "\n".join(lines[i + 1:end])))
        i = end + 1
    return blocks


def python_blocks(path: Path) -> list[Block]:
    return [block for block in fenced_blocks(path) if block.language == "python"]


def no_run_blocks() -> list[Block]:
    return [block for path in DOC_FILES for block in python_blocks(path) if "no-run" in block.options]


def no_run_reason(block: Block) -> str:
    first = block.code.lstrip("\n").split("\n", 1)[0].strip()
    return first.lstrip("#").strip() if first.startswith("#") else ""


def test_there_is_documentation_to_test():
    assert (ROOT / "README.md") in DOC_FILES and len(DOC_FILES) > 1, DOC_FILES
    assert python_blocks(ROOT / "README.md"), "the README's tour has no Python to run"


def test_python_fences_have_known_options():
    for path in DOC_FILES:
        for block in python_blocks(path):
            unknown = set(block.options) - PYTHON_OPTIONS
            assert not unknown, f"{block.name}: unknown fence options {sorted(unknown)} (known: {sorted(PYTHON_OPTIONS)})"


def runnable_blocks(path: Path) -> list[Block]:
    return [block for block in python_blocks(path) if "no-run" not in block.options]


@pytest.mark.parametrize("path", [p for p in DOC_FILES if runnable_blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path, tmp_path, monkeypatch):
    runnable = runnable_blocks(path)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    namespace = {"__name__": "__docs__"}
    try:
        for block in runnable:
            # Blank lines in front, so that a traceback names the markdown file's own line.
            code = compile("\n" * (block.line - 1) + block.code, str(path), "exec")
            exec(code, namespace)
    finally:
        torch.set_num_threads(threads)


def test_no_run_blocks_are_few_compile_and_say_why():
    """A no-run block (it needs a GPU or CIFAR's files) is not executed here: it must be Python
    that compiles, start with a comment saying why it cannot run, and such blocks stay few."""
    blocks = no_run_blocks()
    assert len(blocks) <= MAX_NO_RUN, (f"{len(blocks)} Python blocks are marked no-run "
                                       f"({', '.join(b.name for b in blocks)}); at most {MAX_NO_RUN}")
    for block in blocks:
        compile(block.code, block.name, "exec")
        assert no_run_reason(block), f"{block.name}: a no-run block must start with a comment saying why"


# ----------------------------------------------------------------------------- command lines
def command_lines(path: Path) -> list[tuple[str, list[str]]]:
    """(where, argv after `fastadv`) for each fastadv command of the file's non-Python blocks."""
    commands = []
    for block in fenced_blocks(path):
        if block.language not in ("", "bash", "sh", "shell", "console", "text"):
            continue
        lines = block.code.split("\n")
        i = 0
        while i < len(lines):
            first, text = i, lines[i]
            while text.rstrip().endswith("\\") and i + 1 < len(lines):  # continuation lines
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i]
            i += 1
            prompt = re.match(r"^\s*\$\s+", text)
            if block.language in ("text", "console") and not prompt:
                continue  # a program's output: only the lines after a prompt are commands
            text = text[prompt.end():] if prompt else text
            for segment in re.split(r"\s(?:&&|;|\|\|)\s", text):
                try:
                    tokens = shlex.split(segment, comments=True)
                except ValueError:  # output text, not a command
                    continue
                if tokens[:1] == ["fastadv"]:
                    argv = tokens[1:]
                elif tokens[:1] == ["torchrun"] and "fastadv.cli" in tokens:
                    argv = tokens[tokens.index("fastadv.cli") + 1:]
                else:
                    continue
                commands.append((f"{path.relative_to(ROOT)}:{block.line + first}", argv))
    return commands


ALL_COMMANDS = [command for path in DOC_FILES for command in command_lines(path)]


@functools.lru_cache(maxsize=None)
def _parser():
    from fastadv.cli import build_parser

    return build_parser()


def test_the_readme_shows_each_command():
    shown = {argv[0] for _, argv in command_lines(ROOT / "README.md") if argv}
    assert {"train", "eval", "attack", "reproduce"} <= shown, shown


@pytest.mark.parametrize("where, argv", ALL_COMMANDS, ids=[where for where, _ in ALL_COMMANDS])
def test_command_line_parses(where, argv, tmp_path, monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exit_:
            assert exit_.code == 0 and ("--help" in argv or "-h" in argv), (
                f"{where}: `fastadv {shlex.join(argv)}` is refused by the parser: {err.getvalue().strip().splitlines()[-1:]}")
            return
    if args.command == "train":
        from fastadv.cli import method_option_flags
        from fastadv.config import TrainConfig

        # As `fastadv train` builds its settings (fastadv.cli._train); ltd's default teacher must exist.
        monkeypatch.chdir(tmp_path)
        for dataset in ("digits", "cifar10", "cifar100"):
            (tmp_path / "runs" / f"{dataset}-standard").mkdir(parents=True)
        options = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
        options["method_options"] = {name: getattr(args, name) for name in method_option_flags()
                                     if getattr(args, name) is not None}
        try:
            TrainConfig(**options).resolved()
        except (TypeError, ValueError) as error:
            pytest.fail(f"{where}: `fastadv {shlex.join(argv)}` is refused: {error}")
    elif args.command == "reproduce":
        from fastadv.claims import CLAIMS

        unknown = set(args.claims) - set(CLAIMS) - {"all"}
        assert not unknown, f"{where}: no claim named {sorted(unknown)} (claims: {', '.join(CLAIMS)})"


# ----------------------------------------------------------------------------- links
def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset:
    seen: dict[str, int] = {}
    inside = False
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("```"):
            inside = not inside
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and not inside:
            slug = _slug(heading.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            if count:
                seen[f"{slug}-{count}"] = 1
    return frozenset(seen)


def prose(path: Path) -> str:
    """The file without its fenced blocks."""
    return re.sub(r"^```.*?^```[ \t]*$", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(path)):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no heading #{anchor} in {linked.relative_to(ROOT)})")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {'; '.join(broken)}"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_tables_are_rectangular(path):
    """Every row of a table has its header's number of cells (a bare | in a cell splits it: write \\|)."""
    uneven, header = [], None
    for line in prose(path).split("\n"):
        if not line.startswith("|"):
            header = None
            continue
        cells = len(re.findall(r"(?<!\\)\|", line))
        if header is None:
            header = cells
        elif cells != header:
            uneven.append(f"{line[:60]}... ({cells - 1} cells, the header {header - 1})")
    assert not uneven, f"{path.relative_to(ROOT)}: " + "; ".join(uneven)
