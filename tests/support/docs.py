"""Read the command blocks of a Markdown document, for ``test_docs.py``.

A fenced block whose language is ``sh`` holds one ``shadowdb`` command per line; a
comment on the line that starts with ``exits N`` (``# exits 1 while work remains``)
says the exit code the line must end with, 0 otherwise. A ``python`` block is a
script. Either is *illustrative* when the line before its fence is
``<!-- illustrative -->``: it needs something a scratch deployment does not have (a
real Nova, a production URL, a placeholder), and is counted but not run. Other fences
hold no command (configuration, SQL, output) and must say which language they are,
so that no command block can slip past the test under another name.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

__all__ = ["ILLUSTRATIVE", "NOT_COMMANDS", "RUNNABLE", "Block", "Command", "blocks", "commands"]

#: The marker of a block that is not run, on the line before its fence.
ILLUSTRATIVE = "<!-- illustrative -->"
#: Fence languages that hold commands.
RUNNABLE = ("sh", "python")
#: Fence languages that hold no command.
NOT_COMMANDS = ("ini", "sql", "text")

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_EXITS = re.compile(r"#\s*exits\s+(\d+)\b")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block: where it starts, its language and text, and whether it runs."""

    path: Path
    line: int
    lang: str
    text: str
    illustrative: bool

    @property
    def where(self) -> str:
        """Name the block's place, as ``README.md:42``."""
        return f"{self.path.name}:{self.line}"


@dataclasses.dataclass(frozen=True)
class Command:
    """One line of an ``sh`` block: its arguments after ``shadowdb`` and its exit code."""

    line: int
    text: str
    args: tuple[str, ...]
    exit_code: int


def blocks(path: Path) -> list[Block]:
    """Return every fenced block of the document at ``path``, in order.

    Raises:
        ValueError: a fence with no language or an unknown one, or one left open.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang = opening.group(1), opening.group(2)
        if lang not in RUNNABLE + NOT_COMMANDS:
            raise ValueError(
                f"{path.name}:{i + 1}: a fence must name one of "
                f"{', '.join(RUNNABLE + NOT_COMMANDS)}, not {lang or 'nothing'!r}"
            )
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{path.name}:{i + 1}: the fence is never closed")
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        found.append(
            Block(
                path=path,
                line=i + 1,
                lang=lang,
                text="\n".join(_dedent(line, indent) for line in lines[i + 1 : end]) + "\n",
                illustrative=before == ILLUSTRATIVE,
            )
        )
        i = end + 1
    return found


def commands(block: Block, *, only_shadowdb: bool = False) -> list[Command]:
    """Return the commands of an ``sh`` block.

    Args:
        only_shadowdb: skip the lines that are not ``shadowdb`` commands (for an
            illustrative block) instead of refusing them.

    Raises:
        ValueError: a line that is not one ``shadowdb`` command.
    """
    out: list[Command] = []
    for offset, raw in enumerate(block.text.splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{block.path.name}:{block.line + offset}"
        if text.endswith("\\"):
            raise ValueError(f"{where}: one command per line, no continuation: {text!r}")
        words = shlex.split(text, comments=True)
        if only_shadowdb and (not words or words[0] != "shadowdb"):
            continue
        if not words or words[0] != "shadowdb":
            raise ValueError(
                f"{where}: a runnable sh line is one shadowdb command (mark the block "
                f"{ILLUSTRATIVE} if it needs more): {text!r}"
            )
        declared = _EXITS.match(_comment(text))
        out.append(
            Command(
                line=block.line + offset,
                text=text,
                args=tuple(words[1:]),
                exit_code=int(declared.group(1)) if declared else 0,
            )
        )
    return out


def _dedent(line: str, indent: str) -> str:
    """Remove a list item's indentation (that of the fence) from a line of its block."""
    return line[len(indent) :] if line.startswith(indent) else line.lstrip()


def _comment(text: str) -> str:
    """Return the shell comment of a line (from its first unquoted ``#``), or ""."""
    quote = ""
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[i:]
    return ""
