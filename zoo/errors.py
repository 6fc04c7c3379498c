"""Errors the zoo raises for bad input. The CLI prints their message without a traceback."""


class ZooError(Exception):
    """Base class for every user-facing error of the zoo."""


class UnknownModelError(ZooError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CheckpointError(ZooError):
    """A checkpoint directory whose files, keys or shapes do not match the model."""


class ContextLengthError(ZooError, ValueError):
    """A request that does not fit in the model's context."""


class OutputError(ZooError):
    """An output path that cannot be written, or whose contents writing would destroy."""


class MissingDependencyError(ZooError, ImportError):
    """An optional dependency that a feature needs is not installed."""


def require(module: str, extra: str):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed; install it with: pip install 'graph-zoo[{extra}]'"
        ) from exc
