"""Every ```python block of README.md and of the docs' Markdown pages runs as written.

Each block runs in a fresh namespace after ``docs/snippet_setup.py`` (imports and a toy model:
``base``, ``params``, ``batch``, ``model_losses``, ``losses_of``), in a temporary working
directory. A block preceded by ``<!-- skip-test: reason -->`` is not run; the reason is
required, and such blocks should stay rare (several devices, long runs).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest

# the snippets train with optax and flax, which promote dtypes implicitly (optax's Adam raises
# a Python float to an int32 power): they run as users run them, under standard promotion
pytestmark = pytest.mark.standard_promotion

ROOT = pathlib.Path(__file__).parents[1]
PREAMBLE = ROOT / "docs" / "snippet_setup.py"
DOCUMENTS = [ROOT / "README.md", ROOT / "MEASURED.md", *sorted((ROOT / "docs").rglob("*.md"))]
DOCUMENTS = [d for d in DOCUMENTS if "_build" not in d.parts]

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")
SKIP = re.compile(r"<!--\s*skip-test:(?P<reason>.*?)-->")


@dataclasses.dataclass(frozen=True)
class Block:
    path: pathlib.Path
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the reason, when marked with <!-- skip-test: reason -->

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract(path: pathlib.Path) -> list[Block]:
    """The ```python blocks of a Markdown file, dedented, with their skip marks."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"]
        end = i + 1
        while end < len(lines) and not (
            lines[end].strip().startswith(fence) and lines[end].strip().strip(fence[0]) == ""
        ):
            end += 1
        if info.lower() in ("python", "py"):
            body = [
                line[len(indent) :] if line.startswith(indent) else line
                for line in lines[i + 1 : end]
            ]
            previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
            mark = SKIP.search(previous)
            skip = mark["reason"].strip() if mark else None
            blocks.append(Block(path, i + 1, "\n".join(body) + "\n", skip))
        i = end + 1
    return blocks


BLOCKS = [block for path in DOCUMENTS for block in extract(path)]


def test_blocks_are_found():
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    assert len(readme) >= 2  # the five lines and the methods: the README is the front door
    assert any("wait_until_finished" in b.code for b in BLOCKS)  # the checkpoint guide


def test_skips_give_a_reason_and_stay_rare():
    skipped = [b for b in BLOCKS if b.skip is not None]
    assert all(b.skip for b in skipped), [b.id for b in skipped if not b.skip]
    assert len(skipped) <= max(1, len(BLOCKS) // 10), [b.id for b in skipped]


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.id)
def test_block_runs(block, tmp_path, monkeypatch):
    if block.skip is not None:
        pytest.skip(block.skip)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__snippet__"}
    exec(compile(PREAMBLE.read_text(), str(PREAMBLE), "exec"), namespace)
    # the block's own line numbers in tracebacks: pad with the lines above it
    source = "\n" * block.line + block.code
    exec(compile(source, str(block.path), "exec"), namespace)


def test_the_checkpoint_snippet_runs_twice_in_one_directory(tmp_path, monkeypatch):
    """The orbax snippet of the checkpoints guide, run a second time where the first left its
    checkpoint, replaces it (``force=True``) instead of failing with 'already exists'."""
    (block,) = [b for b in BLOCKS if "wait_until_finished" in b.code]
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        namespace = {"__name__": "__snippet__"}
        exec(compile(PREAMBLE.read_text(), str(PREAMBLE), "exec"), namespace)
        exec(compile("\n" * block.line + block.code, str(block.path), "exec"), namespace)
