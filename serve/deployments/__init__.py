"""The model deployments as plain classes (`serve/app.py` makes them Serve deployments), and the
plain-data contracts between them and the ingress (`contracts`, the only module the ingress imports).

The classes are exported lazily: importing `serve.deployments.contracts` loads no model code.
"""

from __future__ import annotations

from modalities._lazy import lazy_exports

_EXPORTS = {"AudioEncoder": "audio", "VisionEncoder": "vision", "LLMDecoder": "llm", "Speech": "speech"}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


def deployment_class(name: str) -> type:
    """The class behind the deployment called `name` (a registry spec's `deployment`)."""
    if name not in _EXPORTS:
        raise ValueError(f"unknown deployment {name!r}; known: {', '.join(_EXPORTS)}")
    return __getattr__(name)
