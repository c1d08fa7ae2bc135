"""The agent: one per DCV workstation."""
