"""Checks of the files a command is given, made before anything loads, each failing with one
line that says what to do (CliError; `fastcodellama.cli.main` prints it and exits non-zero)."""
from __future__ import annotations

import importlib.util
import json
import os


class CliError(Exception):
    """A mistake in how a command was called: printed as one line, exit status `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """Ctrl-C: the message (what was kept, how to go on) is printed as is, exit status 130."""


def readable_file(path: str, what: str) -> None:
    """`what` names the file for the message, e.g. "problems file (--input_data_fn)"."""
    if not os.path.exists(path):
        raise CliError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise CliError(f"{what} {path!r} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise CliError(f"{what} {path!r} is not readable (check its permissions)")


def output_file(path: str, flag: str) -> None:
    """The folder that is to hold `path` exists and takes files."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CliError(f"{flag} {path!r} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise CliError(f"output folder {folder!r} (of {flag} {path}) does not exist; create it or give another path")
    if not os.access(folder, os.W_OK):
        raise CliError(f"output folder {folder!r} (of {flag} {path}) is not writable")


def model_folder(path: str, flag: str = "--model", default: str = "leave it out for the embedded demo model") -> None:
    """A Hugging Face checkpoint folder: it exists and holds a readable config.json."""
    hint = f"give {flag} DIR, a Hugging Face checkpoint folder ({default})"
    if not os.path.exists(path):
        raise CliError(f"model folder {path!r} does not exist; {hint}")
    if not os.path.isdir(path):
        raise CliError(f"model {path!r} is a file; {hint}")
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise CliError(f"{path!r} has no config.json, so it is not a model folder; {hint}")
    try:
        with open(config, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read {config}: {e}") from None


def model_architecture(path: str) -> None:
    """The engine runs the model's architecture (imports the engine, so torch)."""
    from engine.models.registry import read_model_config

    try:
        read_model_config(path)
    except (ValueError, KeyError, TypeError) as e:
        detail = f"config.json lacks {e}" if isinstance(e, KeyError) else str(e)
        raise CliError(f"the engine cannot run the model in {path!r}: {detail}") from None


def module_available(module: str, extra: str, flag: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise CliError(f"{flag} needs {module}: pip install 'fastcodellama[{extra}]' (or pip install {module})")
