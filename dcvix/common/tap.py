"""The twistd command line both daemons share: ``--conf FILE``."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from dcvix.common.config import (
    ConfigError,
    LoadedConfig,
    candidate_paths,
    default_file_text,
    discover,
    load_config,
)
from dcvix.common.daemon import StartupError, fail, log_observer, prepare_process


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


def make_daemon(
    options: DaemonOptions,
    build: Callable[[Any, Any, Any], IService],
    reactor: Any = None,
) -> IService:
    """What each plugin's ``makeService`` does: process set-up, logging, build.

    A problem found while building is one line on stderr and exit status 1.
    """
    if reactor is None:
        from twisted.internet import reactor
    prepare_process()
    config = options["config"]
    try:
        observer = log_observer(options.component, config.log)
        for note in options["notes"]:
            Logger().warn("{note}", note=note)
        service = build(config, reactor, observer)
    except StartupError as error:
        fail(f"dcvix-{options.component}: {error}")
    # The collector's full passes stop the reactor while they walk every
    # object: 0.2 to 0.5 s with a 10,000-agent fleet in memory (bench/scale.py).
    # What is built now (modules, configuration, the services) lives as long
    # as the process: out of those passes. (A larger first generation was
    # tried: its collections then took 0.1 s each, and full passes as long.)
    gc.freeze()
    return service
