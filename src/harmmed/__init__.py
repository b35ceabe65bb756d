"""Causal mediation analysis of harmful generation in chat LLMs."""

__version__ = "0.1.0"
