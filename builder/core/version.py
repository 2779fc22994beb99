"""The tool's version (the package and every record of a build carry it)."""
__version__ = "0.1.0"
