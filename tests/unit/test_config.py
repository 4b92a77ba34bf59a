"""The shipped Serve configs parse into `ChorusConfig`; the config refuses what it must."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve.config import ChorusConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def app_args(serve_config: dict) -> dict:
    (app,) = serve_config["applications"]
    assert app["import_path"] == "serve.app:build_app"
    return app["args"]


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml"])
def test_deploy_configs_validate(name):
    config = ChorusConfig.model_validate(app_args(yaml.safe_load((DEPLOY / name).read_text())))
    assert config.served_model_name == "chorus"


def test_local_is_cpu_loopback_packaged():
    serve_config = yaml.safe_load((DEPLOY / "local.yaml").read_text())
    assert serve_config["http_options"]["host"] == "127.0.0.1"
    config = ChorusConfig.model_validate(app_args(serve_config))
    assert config.llm.model == "packaged" and config.whisper.model == "packaged" and config.vision is None
    assert all(getattr(config.deployments, d).num_gpus == 0 for d in ("audio_encoder", "llm_decoder"))


def test_gpu_gives_each_model_its_own_gpu():
    config = ChorusConfig.model_validate(app_args(yaml.safe_load((DEPLOY / "gpu.yaml").read_text())))
    for name in ("audio_encoder", "vision_encoder", "llm_decoder"):
        assert getattr(config.deployments, name).num_gpus == 1
    assert config.deployments.ingress.num_gpus == 0


def test_rayservice_wraps_the_gpu_config():
    manifest = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService"
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == yaml.safe_load((DEPLOY / "gpu.yaml").read_text())


def test_unknown_field_is_refused():
    with pytest.raises(ValidationError, match="extra"):
        ChorusConfig.model_validate({"llm": {"model": "packaged", "quantisation": "int8"}})


def test_embed_mode_needs_a_projector():
    with pytest.raises(ValidationError, match="audio_projector"):
        ChorusConfig.model_validate({"fusion": {"audio_mode": "embed"}})


def test_serve_options_autoscaling_replaces_replicas():
    config = ChorusConfig.model_validate(
        {"deployments": {"llm_decoder": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}}}
    )
    options = config.deployments.llm_decoder.to_serve_options()
    assert "num_replicas" not in options and options["autoscaling_config"]["max_replicas"] == 3
    assert options["ray_actor_options"] == {
        "num_cpus": 1.0,
        "num_gpus": 0.0,
        "runtime_env": {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}},
    }


def test_shared_configs_require_keys():
    config = ChorusConfig.model_validate(app_args(yaml.safe_load((DEPLOY / "gpu.yaml").read_text())))
    assert config.auth.require_api_keys
    local = ChorusConfig.model_validate(app_args(yaml.safe_load((DEPLOY / "local.yaml").read_text())))
    assert not local.auth.require_api_keys and not local.auth.api_keys


def test_remote_media_off_by_default_and_legacy_flag():
    assert ChorusConfig().remote_media.enabled is False
    # the old boolean only ever meant "off"; `true` points at the block that replaced it
    assert ChorusConfig.model_validate({"allow_remote_media_urls": False}).remote_media.enabled is False
    with pytest.raises(ValidationError, match="remote_media"):
        ChorusConfig.model_validate({"allow_remote_media_urls": True})


def test_remote_media_needs_an_allowlist():
    with pytest.raises(ValidationError, match="allowed_hosts"):
        ChorusConfig.model_validate({"remote_media": {"enabled": True}})
    config = ChorusConfig.model_validate({"remote_media": {"enabled": True, "allowed_hosts": ["Img.Example.com."]}})
    assert config.remote_media.allowed_hosts == ["img.example.com"] and not config.remote_media.allow_http


def test_stream_holding_deployments_drain_for_the_request_deadline():
    from serve.config import ChorusConfig

    config = ChorusConfig.model_validate({"limits": {"request_timeout_s": 300}, "deployments": {"ingress": {"num_cpus": 0.25}}})
    assert config.deployments.ingress.to_serve_options()["graceful_shutdown_timeout_s"] == 310
    assert config.deployments.llm_decoder.graceful_shutdown_timeout_s == 310
    assert config.deployments.audio_encoder.graceful_shutdown_timeout_s == 20
    explicit = ChorusConfig.model_validate({"deployments": {"llm_decoder": {"graceful_shutdown_timeout_s": 5}}})
    assert explicit.deployments.llm_decoder.graceful_shutdown_timeout_s == 5


def test_every_config_field_is_described() -> None:
    """One source of truth for settings: every field of the service config, nested ones included,
    carries a description (docs/configuration.md and `--help` read them)."""
    import typing

    from pydantic import BaseModel

    missing: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(prefix + name)
            for outer in (field.annotation, *typing.get_args(field.annotation)):
                for candidate in (outer, *typing.get_args(outer)):
                    if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                        walk(candidate, f"{prefix}{name}.")

    walk(ChorusConfig, "")
    assert missing == []
