"""The errors of model loading: each message names the model or setting and the fix."""

from __future__ import annotations

from pipeline.errors import UserFacingError


class ModelNotFoundError(UserFacingError, FileNotFoundError):
    """A model reference could not be resolved to weights on this machine."""


class ModelLoadError(UserFacingError, RuntimeError):
    """A model cannot be loaded with the settings asked for; the message names the
    setting and the fix."""


class ModelSourceRefusedError(UserFacingError, PermissionError):
    """A config names model weights in a folder or a format that the `security` section does not allow."""


class PromptTooLongError(UserFacingError, ValueError):
    """A prompt (question + passages) does not fit the language model's context window."""
