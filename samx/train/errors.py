"""The engine's one error type."""


class ConfigError(ValueError):
  """A configuration value that samx cannot train with; the message names the key."""
