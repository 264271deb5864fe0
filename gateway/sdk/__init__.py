"""Deprecated: the server SDK is the top-level ``wattfare`` package (``import wattfare``).

This name stays importable for code written against it, with a DeprecationWarning; it
will be removed in a later release.
"""

from __future__ import annotations

import warnings

from wattfare import Session, UserClient, Wattfare

warnings.warn(
    "gateway.sdk is deprecated: import the SDK as 'wattfare' (from wattfare import Wattfare)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["Session", "UserClient", "Wattfare"]
