"""The application builder: one validated config → the Ray Serve application.

`serve run deploy/local.yaml` / `serve deploy deploy/local.yaml` call `build_app(args)` with the
YAML's `args`. Deployment classes stay plain; this is the only place they become deployments (ray.llm's
builder does the same). The ingress class is the one exception in shape, not in place: Ray needs its
FastAPI wrapper at module level (`serve/http/ingress.py`), and it is made a deployment here too.
One encoder deployment per encoder the config enables, from the modality registry; the Speech
deployment where `speech` is set.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from .admission import KeyStore
from .config import DECODER, INGRESS, SPEECH, ChorusConfig, DeploymentOptions
from .deployments import deployment_class
from .http.ingress import IngressDeployment


def _deployment(cls: type, name: str, options: DeploymentOptions) -> Any:
    return serve.deployment(cls, name=name, **options.to_serve_options())


def build_app(args: dict[str, Any]) -> Application:
    """Build the Chorus application from a Serve config file's `args` (a `ChorusConfig` as a dict)."""
    config = ChorusConfig.model_validate(args or {})
    KeyStore(config.auth)  # a config that requires API keys and has none fails here, before any replica starts
    payload = config.model_dump(mode="json")
    opts = config.deployments
    bound: dict[str, Any] = {}  # one deployment per name: images and documents share the VisionEncoder
    encoders = {}
    for media in config.enabled_modalities():
        if media.deployment not in bound:
            cls = deployment_class(media.deployment)
            bound[media.deployment] = _deployment(cls, media.deployment, opts.encoder(media)).bind(payload)
        encoders[media.kind] = bound[media.deployment]
    llm = _deployment(deployment_class(DECODER), DECODER, opts.llm_decoder).bind(payload)
    speech = None if config.speech is None else _deployment(deployment_class(SPEECH), SPEECH, opts.speech).bind(payload)
    return _deployment(IngressDeployment, INGRESS, opts.ingress).bind(payload, encoders, llm, speech)
