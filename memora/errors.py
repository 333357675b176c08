"""User-facing errors. Every message says what was wrong and what to do about it."""


class MemoraError(ValueError):
    """Base class of the errors the engine raises for bad input; the CLI prints them as one line."""


class WeightFormatError(MemoraError):
    """A weights file does not fit the base model, or its format cannot be recognised."""


class UnsafeFileError(MemoraError):
    """A file would need arbitrary code to load (a pickle with custom classes); it is refused."""


class InputError(MemoraError):
    """Bad input data: images, prompts, ranges."""


class MissingDependencyError(MemoraError):
    """An optional package is not installed; the message carries the exact install command."""


class RunFolderMismatch(InputError):
    """An output folder holds a run made with other settings (it is never mixed with a new one)."""
