"""Every Serve config shipped in deploy/ validates (Ray's schema and ours) and builds its application
graph: one deployment per enabled modality, the decoder and the ingress, and every per-deployment
override in the file names a deployment that exists. No Ray cluster and no weights are needed:
building the graph binds the classes, it does not start replicas."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve._private.build_app import build_app as build_graph
from ray.serve.schema import ServeDeploySchema

from fusion.registry import MODALITIES
from modalities.llm.config import SUPPORTED_ARCHITECTURES
from serve.app import build_app
from serve.config import ChorusConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CONFIG_FILES = sorted(DEPLOY.glob("*.yaml"))


def serve_configs(path: Path) -> list[dict]:
    """The Serve configs in `path`: the file itself, or a RayService's `serveConfigV2`."""
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    configs = []
    for document in documents:
        if document.get("kind") == "RayService":
            configs.append(yaml.safe_load(document["spec"]["serveConfigV2"]))
        elif "applications" in document:
            configs.append(document)
    return configs


def test_deploy_holds_the_three_configs() -> None:
    assert {p.name for p in CONFIG_FILES} >= {"local.yaml", "gpu.yaml", "rayservice.yaml"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_config_validates_and_builds(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHORUS_API_KEYS", "sk-deploy-config-test")  # configs that require keys
    configs = serve_configs(path)
    assert configs, f"{path.name} holds no Serve config"
    for serve_config in configs:
        ServeDeploySchema.model_validate(serve_config)
        for application in serve_config["applications"]:
            assert application["import_path"] == "serve.app:build_app"
            config = ChorusConfig.model_validate(application["args"])
            built = build_graph(build_app(application["args"]), name=application["name"])
            names = {deployment.name for deployment in built.deployments}
            expected = {media.deployment for media in config.enabled_modalities()} | {"LLMDecoder", "Ingress"}
            expected |= {"Speech"} if config.speech is not None else set()
            assert names == expected
            overrides = {d["name"] for d in application.get("deployments", [])}
            assert overrides <= names, f"{path.name} overrides unknown deployments {overrides - names}"


def test_gpu_config_names_a_model_the_batched_engine_runs() -> None:
    """The multi-GPU config's LLM must be one the batched engine supports (it names its weights by
    path, so the architecture is read from the name: a Llama model)."""
    args = serve_configs(DEPLOY / "gpu.yaml")[0]["applications"][0]["args"]
    config = ChorusConfig.model_validate(args)
    assert config.llm.engine == "batched"
    assert any(arch in config.llm.model.lower() for arch in SUPPORTED_ARCHITECTURES), config.llm.model
    assert {m.kind for m in config.enabled_modalities()} == set(MODALITIES)
