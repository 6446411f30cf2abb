"""scenecraft: declarative multi-concept scenes for Stable Diffusion."""

from __future__ import annotations

__version__ = "0.1.0"
