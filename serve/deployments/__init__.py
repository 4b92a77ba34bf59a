"""The model deployments as plain classes (`serve/app.py` makes them Serve deployments), and the
plain-data contracts between them and the ingress (`contracts`, the only module the ingress imports).

The classes are exported lazily: importing `serve.deployments.contracts` loads no model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AudioEncoder": "serve.deployments.audio",
    "VisionEncoder": "serve.deployments.vision",
    "LLMDecoder": "serve.deployments.llm",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def deployment_class(name: str) -> type:
    """The class behind the deployment called `name` (a registry spec's `deployment`)."""
    if name not in _EXPORTS:
        raise ValueError(f"unknown deployment {name!r}; known: {', '.join(_EXPORTS)}")
    return __getattr__(name)
