"""twistd glue for ``twistd -n dcvix-director --conf FILE``: no logic here."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

from dcvix.common.tap import DaemonOptions, make_daemon
from dcvix.director.config import DirectorConfig
from dcvix.director.service import build_director


class Options(DaemonOptions):
    """Command line of the director."""

    component = "director"
    config_class = DirectorConfig


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the director from the loaded config."""
    return make_daemon(options, build_director, reactor)
