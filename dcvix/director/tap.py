"""twistd glue for ``twistd -n dcvix-director --conf FILE``: no logic here."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger

from dcvix.common.daemon import StartupError, fail, log_observer, prepare_process
from dcvix.common.tap import DaemonOptions
from dcvix.director.config import DirectorConfig
from dcvix.director.service import build_director

log = Logger()


class Options(DaemonOptions):
    """Command line of the director."""

    component = "director"
    config_class = DirectorConfig


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the director from the loaded config."""
    if reactor is None:
        from twisted.internet import reactor
    prepare_process()
    config: DirectorConfig = options["config"]
    try:
        observer = log_observer("director", config.log)
        for note in options["notes"]:
            log.warn("{note}", note=note)
        return build_director(config, reactor, observer)
    except StartupError as error:
        fail(f"dcvix-director: {error}")
