"""dcvix: a session broker for Amazon DCV remote desktops (director and agent)."""

__version__ = "0.1.0.dev0"
