"""One exception hierarchy for medsam2kit.

Every error raised on bad user input derives from :class:`MedSAM2KitError` *and* from the
built-in exception a caller would expect (``ValueError``, ``TypeError``, ``FileNotFoundError``,
...), so ``except ValueError`` keeps working. Messages name the argument (or file), what was
expected and what was found.

Example:
    >>> from medsam2kit.errors import InvalidInputError
    >>> try:
    ...     raise InvalidInputError("mask: expected shape (4, 5), got (4, 6)")
    ... except ValueError as err:
    ...     print(err)
    mask: expected shape (4, 5), got (4, 6)
"""

from __future__ import annotations


class MedSAM2KitError(Exception):
    """Base class of every error raised by medsam2kit."""


class InvalidInputError(MedSAM2KitError, ValueError):
    """An argument has the wrong value, shape, range or content."""


class InvalidTypeError(MedSAM2KitError, TypeError):
    """An argument has the wrong type."""


class FrameIndexError(MedSAM2KitError, IndexError):
    """A frame index is outside the sequence (an ``IndexError``, so iteration stops cleanly)."""


class ShapeMismatchError(InvalidInputError):
    """Two arrays that must agree in shape do not."""


class GeometryError(InvalidInputError):
    """Spacing, affine, slice positions or orientation are missing, uneven or inconsistent."""


class MissingFileError(MedSAM2KitError, FileNotFoundError):
    """A file or folder that was named does not exist."""


class FileFormatError(MedSAM2KitError, ValueError):
    """A file exists but cannot be read as the expected format (unreadable, truncated, unsupported)."""


class CheckpointError(MedSAM2KitError, ValueError):
    """A checkpoint does not match the model it is loaded into."""


class ConfigError(MedSAM2KitError, ValueError):
    """A SAM2 configuration cannot be found or built."""


class DeviceError(MedSAM2KitError, RuntimeError):
    """A requested device is not available."""


class MissingDependencyError(MedSAM2KitError, ImportError):
    """An optional dependency needed for this call is not installed."""


class OutputError(MedSAM2KitError, OSError):
    """An output file or folder cannot be written (unwritable folder, a file where a folder is
    needed, a name the file system refuses, a full disk); the message names the path."""


class OutputExistsError(OutputError, FileExistsError):
    """An output already exists and overwriting it was not asked for (``--overwrite``)."""


class FileTooLargeError(FileFormatError):
    """A file's header claims more data than the file can hold, or more than the configured limit
    (checked before anything is allocated); the message names the file and both numbers."""


class GeometryWarning(UserWarning):
    """A file's geometry is missing and a fallback was used (the message names the file)."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DeviceError",
    "FileFormatError",
    "FileTooLargeError",
    "FrameIndexError",
    "GeometryError",
    "GeometryWarning",
    "InvalidInputError",
    "InvalidTypeError",
    "MedSAM2KitError",
    "MissingDependencyError",
    "MissingFileError",
    "OutputError",
    "OutputExistsError",
    "ShapeMismatchError",
]
