"""The README's marked curl examples, for tests that run them as written."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example(name: str) -> list[str]:
    """The curl commands of the README block after ``<!-- example:NAME -->``."""
    text = README.read_text()
    block = text.split(f"<!-- example:{name} -->\n```\n", 1)[1].split("```", 1)[0]
    commands: list[str] = []
    for line in block.splitlines():
        if line.startswith("curl"):
            commands.append(line)
        else:
            commands[-1] += "\n" + line
    return commands
