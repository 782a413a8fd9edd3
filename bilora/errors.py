"""The harness's error convention: user errors are one line, bugs keep their traceback.

A :class:`UserError` is something the user can fix (a config key, a missing or changed
file, a download that failed): the ``bilora`` command prints its message on one line,
without a traceback, and exits with its ``exit_code`` (2 for the config, 1 for data and
runtime). Any other exception is a bug and propagates with its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message names the file, URL or config key at fault."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config is invalid; the message names the file (when known) and the key."""

    exit_code = 2


class DataError(UserError, RuntimeError):
    """Data could not be fetched, read or verified; the message names the file or URL."""


class ArtifactError(UserError, RuntimeError):
    """A model artifact (base checkpoint, pretrained weights) is missing or unloadable."""
