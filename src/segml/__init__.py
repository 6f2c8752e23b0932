"""segml: behavioural customer segments from raw purchase records."""

from segml.errors import ConfigError, InputDataError, SegmlError

__version__ = "0.1.0"

__all__ = ["ConfigError", "InputDataError", "SegmlError", "__version__"]
