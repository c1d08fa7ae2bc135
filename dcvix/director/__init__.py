"""The director: the central broker, its API, CA and policy."""
