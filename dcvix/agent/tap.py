"""twistd glue for ``twistd -n dcvix-agent --conf FILE``: no logic here."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

from dcvix.agent.config import AgentConfig
from dcvix.agent.service import build_agent
from dcvix.common.tap import DaemonOptions, make_daemon


class Options(DaemonOptions):
    """Command line of the agent."""

    component = "agent"
    config_class = AgentConfig


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the agent from the loaded config."""
    return make_daemon(options, build_agent, reactor)
