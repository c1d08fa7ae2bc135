"""The twistd command line both daemons share: ``--conf FILE``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from twisted.python import usage

from dcvix.common.config import (
    ConfigError,
    LoadedConfig,
    candidate_paths,
    default_file_text,
    discover,
    load_config,
)
from dcvix.common.daemon import fail


class DaemonOptions(usage.Options):
    """``--conf FILE``; the config is loaded and checked before twistd forks.

    Any problem is one line on stderr, ``FILE: [section] key: problem``, and
    exit status 1.
    """

    component: ClassVar[str]
    config_class: ClassVar[type[Any]]
    optParameters: ClassVar[list[list[Any]]] = [
        ["conf", None, None, "Configuration file (INI, as Go dcvix)."],
    ]

    def postOptions(self) -> None:
        """Find, read and validate the configuration."""
        try:
            found = discover(
                self.component,
                self["conf"],
                default_file_text(
                    self.config_class, f"dcvix-{self.component} configuration"
                ),
                candidate_paths(self.component, Path.cwd()),
            )
            if found.path is None:
                config = self.config_class()
            else:
                config = load_config(self.config_class, found.path)
        except ConfigError as error:
            fail(str(error))
        source: LoadedConfig = config.source
        self["config"] = config
        self["notes"] = (*found.notes, *source.warnings)
