"""scenecraft: declarative multi-concept scenes for Stable Diffusion.

``scenecraft.load(path)`` parses, checks and compiles a scene file into a RenderPlan. Heavy
modules (torch, diffusers) are imported only by the merge and render phases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from scenecraft.api import Loaded


def load(path: Any, vars: dict[str, Any] | None = None, *, allow_missing: bool = True) -> Loaded:
    """Parse, check and compile a scene file (see `scenecraft.api.load`)."""
    # imported on use: `import scenecraft` (and every submodule's import of it) stays light
    from scenecraft.api import load as _load

    return _load(path, vars, allow_missing=allow_missing)


def merge(*args: Any, **kwargs: Any) -> Any:
    """Merge a plan's concepts into one model (see `scenecraft.merge.api.merge`)."""
    # imported on use: the merge engine brings torch
    from scenecraft.merge.api import merge as _merge

    return _merge(*args, **kwargs)


__all__ = ["__version__", "load", "merge"]
