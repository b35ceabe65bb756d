"""Causal mediation analysis of harmful generation in chat LLMs."""

from .constants import PACKAGE_VERSION as __version__

__all__ = ["__version__"]
