"""Exceptions raised by segml.

Every message says what was wrong, the value seen and what to change, so the
command line can print it as is, without a traceback.
"""


class SegmlError(Exception):
    """Base class of every error segml raises on purpose."""


class ConfigError(SegmlError):
    """The configuration file is missing, unreadable or invalid."""


class InputDataError(SegmlError):
    """The purchase data cannot be used as the configuration describes."""


class SegmentationError(SegmlError):
    """No segmentation satisfies the model settings on this data."""


class QualityGateError(SegmlError):
    """A run failed one or more quality gates; it is recorded but neither promoted nor published."""


class NoUsableLinesError(InputDataError):
    """No line of the source is usable in the window; ``report`` holds the contract's counts, for
    callers to whom an empty window is an answer (a campaign nobody bought from yet)."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report
