"""Keeps the README's configuration reference equal to the declared keys.

``python -m dcvix.configref`` rewrites the tables between the
``<!-- config:NAME -->`` markers of README.md; a test fails when they differ.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from dcvix.agent.config import AgentConfig
from dcvix.common.config import reference_markdown
from dcvix.director.config import DirectorConfig

TABLES = {"director": DirectorConfig, "agent": AgentConfig}


def render(readme: str) -> str:
    """``readme`` with every marked table replaced by the current reference."""
    for name, config_class in TABLES.items():
        pattern = re.compile(
            rf"(<!-- config:{name} -->\n).*?(<!-- /config:{name} -->)", re.DOTALL
        )
        readme, count = pattern.subn(_between(reference_markdown(config_class)), readme)
        if count != 1:
            raise SystemExit(f"README.md lacks the config:{name} markers")
    return readme


def _between(table: str) -> Callable[[re.Match[str]], str]:
    """A ``re.sub`` replacement that puts ``table`` between the two markers."""

    def replace(match: re.Match[str]) -> str:
        return f"{match[1]}{table}\n{match[2]}"

    return replace


def main() -> None:
    """Rewrite README.md in place."""
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(render(path.read_text()))


if __name__ == "__main__":
    main()
