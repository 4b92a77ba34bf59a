"""The application builder: one validated config → the Ray Serve application.

`serve run deploy/local.yaml` / `serve deploy deploy/local.yaml` call `build_app(args)` with the
YAML's `args`. Deployment classes stay plain; this is the only place they become deployments
(ray.llm's builder does the same).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from .auth import KeyStore
from .config import ChorusConfig
from .deployments import AudioEncoder, LLMDecoder, VisionEncoder
from .ingress import IngressDeployment


def build_app(args: dict[str, Any]) -> Application:
    """Build the Chorus application from a Serve config file's `args` (a `ChorusConfig` as a dict)."""
    config = ChorusConfig.model_validate(args or {})
    KeyStore(config.auth)  # a config that requires API keys and has none fails here, before any replica starts
    payload = config.model_dump(mode="json")
    opts = config.deployments

    def deployment(cls, name: str, options):
        return serve.deployment(cls, name=name, **options.to_serve_options())

    audio = deployment(AudioEncoder, "AudioEncoder", opts.audio_encoder).bind(payload)
    vision = None
    if config.vision is not None:
        vision = deployment(VisionEncoder, "VisionEncoder", opts.vision_encoder).bind(payload)
    llm = deployment(LLMDecoder, "LLMDecoder", opts.llm_decoder).bind(payload)
    return deployment(IngressDeployment, "Ingress", opts.ingress).bind(payload, audio, vision, llm)
