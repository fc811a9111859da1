"""Errors that the command line reports as one clear line instead of a traceback."""


class FakescopeError(Exception):
    """A problem the user can fix (bad path, missing weights, bad option)."""


class WeightsUnavailable(FakescopeError):
    pass


class BadInput(FakescopeError):
    """One input file cannot be used; the batch it belongs to goes on."""


class TooLarge(BadInput):
    """An input over a size limit (pixels): the service answers 413 rather than 422."""
