"""The ragft version, recorded beside every artifact and result."""

__version__ = "0.1.0"
