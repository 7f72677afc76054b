"""User-facing errors: every message names what was wrong and what to do about it."""


class D2lflowError(Exception):
    """An error caused by input or environment, reported to the user without a traceback."""


class ParamsError(D2lflowError):
    """params.yaml has a wrong key, type or value."""


class DataError(D2lflowError):
    """A dataset file is missing, corrupt or not in the expected layout."""


class DownloadError(D2lflowError):
    """A download failed or its content did not match the expected checksum."""
