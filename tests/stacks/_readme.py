"""The README's code blocks, as the tests run them (one source of truth for docs and tests)."""
from __future__ import annotations

import os
import re
from typing import NamedTuple

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


class Block(NamedTuple):
    lang: str
    text: str
    line: int          # where it starts in README.md

    @property
    def file(self) -> str | None:
        """The name after ``# file:`` on the first line, for recipe files."""
        first = self.text.split("\n", 1)[0]
        return first.split(":", 1)[1].strip() if first.startswith("# file:") else None


def blocks() -> list[Block]:
    with open(README) as f:
        text = f.read()
    return [Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
            for m in FENCE.finditer(text)]


def recipe_file(name: str) -> str:
    """Returns the README block that starts with ``# file: name``."""
    return next(b.text for b in blocks() if b.file == name)


def commands(program: str) -> list[str]:
    """Returns the README's shell lines that run ``program``."""
    return [line for b in blocks() if b.lang == "sh" for line in b.text.splitlines()
            if line.startswith(program + " ")]
