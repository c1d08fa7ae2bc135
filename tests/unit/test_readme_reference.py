"""The README's key tables are what dcvix.configref renders from the declarations."""

from __future__ import annotations

from pathlib import Path

from dcvix import configref
from dcvix.agent.config import AgentConfig
from dcvix.common.config import reference_markdown
from dcvix.director.config import DirectorConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_key_tables_are_up_to_date() -> None:
    text = README.read_text(encoding="utf-8")
    assert configref.render(text) == text, (
        "README.md key tables are stale: run python -m dcvix.configref"
    )


def test_readme_holds_both_tables() -> None:
    text = README.read_text(encoding="utf-8")
    for name, config_class in (("director", DirectorConfig), ("agent", AgentConfig)):
        table = reference_markdown(config_class)
        assert f"<!-- config:{name} -->\n{table}\n<!-- /config:{name} -->" in text


def test_render_replaces_a_stale_table() -> None:
    text = README.read_text(encoding="utf-8")
    row = "| director | `director_port` | port | `8445` | Port of the HTTPS API. |"
    assert row in text
    stale = text.replace(row, "| director | `director_port` | port | `9999` | Old. |")
    assert configref.render(stale) == text
