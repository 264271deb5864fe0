"""Wattfare: a self-hostable consent layer for AI spend.

An OpenAI-compatible gateway that meters every token against the monthly cap an end user
approved for an app. See README.md.
"""

__version__ = "0.1.0"
