from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("conveyor")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"
