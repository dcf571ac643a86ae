"""The one error type the command-line tools turn into a one-line message and exit status 2."""


class ConfigError(ValueError):
    """A bad value in the run configuration; its message is one line naming the value and what is allowed."""
