"""Error types. Every message names the item (file, model, config key) and the problem."""


class CtrlbenchError(Exception):
    """Base class for errors that ctrlbench reports to the user."""


class ConfigError(CtrlbenchError):
    """The config has a bad key or value."""


class DatasetError(CtrlbenchError):
    """A dataset file is missing or malformed."""


class ModelNotFoundError(CtrlbenchError):
    """A real model is not available locally (this workplace cannot download)."""


class InputError(CtrlbenchError):
    """A job input (image, mask, prompt) is unusable."""
