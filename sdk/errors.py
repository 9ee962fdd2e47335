"""Exceptions that adsrt raises for bad input; the CLI turns them into a message and exit code 1."""


class AdsrtError(Exception):
    """Base class of every error adsrt reports to the user (bad input, corrupt files, mismatches)."""


class ImageReadError(AdsrtError):
    """An image file is missing, unreadable or in a layout adsrt cannot convert."""


class OutputError(AdsrtError):
    """An output cannot be written (bad extension, missing or unwritable folder, encoder failure)."""


class BundleError(AdsrtError):
    """A bundle file is missing, truncated, foreign, of another format version, or inconsistent."""


class DegradationError(AdsrtError, ValueError):
    """Unknown degradation name or a level outside its documented range."""


class DataError(AdsrtError):
    """A data folder is empty, holds unreadable images, or its pairs do not match."""


class MetricError(AdsrtError, ValueError):
    """Images that cannot be scored: mismatched shapes, non-finite values, too small, bad options."""


class InputError(AdsrtError):
    """A runtime input (video file, camera, stream, URI, frame array) is missing, unsupported or unreadable."""


class BackendError(AdsrtError):
    """An inference backend, device or precision is unknown or not available on this machine."""


class RestoreError(AdsrtError):
    """Restoration produced an unusable result (e.g. a non-finite output frame: a broken model or backend)."""


class ConfigError(AdsrtError, ValueError):
    """A network, training or runtime config holds a value out of its range or of the wrong type."""


def check_choice(name: str, value: object, choices, error: type[AdsrtError] = AdsrtError) -> None:
    """Raise ``error`` unless ``value`` is one of ``choices`` (a config field's check; the message lists them)."""
    if value not in choices:
        raise error(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
