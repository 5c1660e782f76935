"""Errors xbench raises on purpose. Each message names the thing at fault.

The CLI prints any :class:`XbenchError` as one line (``xbench: error: ...``) and exits 2.
"""


class XbenchError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class UnknownNameError(XbenchError, KeyError):
    """A method, task, metric or model name that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DuplicateNameError(XbenchError):
    """Two plugins registered the same name."""


class PluginLoadError(XbenchError):
    """An outside plugin failed to import or to register."""


class ParameterError(XbenchError):
    """A method or task parameter, split or CLI value that is not accepted."""


class ModelLoadError(XbenchError):
    """A model directory that is missing, incomplete or of an unsupported family."""


class AttentionsUnavailableError(XbenchError):
    """The model returned no attention weights (for example sdpa attention)."""


class BadImageError(XbenchError):
    """An image that is missing or cannot be decoded."""


class DataError(XbenchError):
    """A data file that is missing or malformed as a whole."""


class MapValidationError(XbenchError):
    """A relevance map with the wrong shape or non-finite values."""


class RunDirectoryError(XbenchError):
    """An output directory that cannot be used (records present without --resume...)."""


class ModelCapabilityError(XbenchError):
    """A model family that does not offer what a method or metric asks of it."""


class PromptTooLongError(XbenchError):
    """A sample's prompt that does not fit the model's context window."""


class PluginDeclarationError(XbenchError):
    """A plugin registered with the wrong base class or an undeclared ``needs`` value."""


class MissingDependencyError(XbenchError):
    """An optional dependency a plugin needs is not installed."""
