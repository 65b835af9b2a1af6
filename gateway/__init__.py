"""parkgate: edge gateway agent for smart industrial parks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("parkgate")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
