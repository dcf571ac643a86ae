"""The one error type the command-line tools turn into a one-line message and exit status 2, and the checks of
where a command will write that raise it."""

import argparse
import difflib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


class ConfigError(ValueError):
    """A bad value in the run configuration; its message is one line naming the value and what is allowed."""


def check_writable(directory: Path, name: str) -> None:
    """A one-line `ConfigError` unless `directory` exists or can be made, and files can be written into it (checked
    before any episode runs)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{name}={str(directory)!r} cannot be created ({err.strerror or err}); give a writable "
                          f"directory") from None
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise ConfigError(f"{name}={str(directory)!r} is not writable ({err.strerror or err}); give a writable "
                          f"directory") from None


#: the `MUJOCO_GL` values MuJoCo accepts on Linux (it refuses any other when TorchRL imports it, whatever the task)
MUJOCO_GL_VALUES = ("egl", "osmesa", "glfw", "glx", "enable", "enabled", "on", "true", "1", "disable", "disabled",
                    "off", "false", "0", "")


def check_environment() -> None:
    """A one-line `ConfigError` for an environment variable that would stop an import later (`MUJOCO_GL`)."""
    value = os.environ.get("MUJOCO_GL")
    if value is not None and value.lower().strip() not in MUJOCO_GL_VALUES and sys.platform.startswith("linux"):
        raise ConfigError(f"MUJOCO_GL={value!r} is not allowed; MuJoCo takes egl, osmesa or glfw (egl or osmesa "
                          f"render without a display), or unset it")


def refuse_or_run(command: str, check: Callable[[], None], run: Callable[[], None]) -> None:
    """A command line's entry: `check_environment()` and `check()` (its arguments, before anything is imported or
    composed for the run), then `run()`; a `ConfigError` from the checks is `<command>: error: <message>` on stderr
    and exit status 2."""
    try:
        check_environment()
        check()
    except ConfigError as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        sys.exit(2)
    run()


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line `ccpo_pl.<tool>: error: ...` with the nearest option (argparse prints its
    usage block first), exit status 2. `prog` is the command, `python -m ccpo_pl.<tool>`."""

    def error(self, message: str):
        options = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        hint = "see --help"
        for token in message.split():
            near = difflib.get_close_matches(token.split("=")[0], options, n=1) if token.startswith("--") else []
            if near:
                hint = f"did you mean {near[0]}?"
                break
        self.exit(2, f"{self.prog.split()[-1]}: error: {message}; {hint}\n")
