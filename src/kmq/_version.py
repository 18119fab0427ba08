"""The installed kmq's version (a leaf module: the manifest writers read it without importing
the package's public API)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kmq")
except PackageNotFoundError:
    __version__ = "0+unknown"
