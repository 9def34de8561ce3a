"""docker-compose.yml: every service has what an operator relies on; `docker compose config`
validates it where the compose plugin is installed."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_services_images_healthchecks_and_secrets():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"redis", "postgres", "worker", "worker-qwen-vl", "discord", "wechat", "flower"}
    for name in ("worker", "worker-qwen-vl", "discord", "wechat"):
        dockerfile = ROOT / services[name]["build"]["dockerfile"]
        assert dockerfile.is_file(), dockerfile
        assert "HEALTHCHECK" in dockerfile.read_text()
        assert services[name]["env_file"] == [{"path": ".env", "required": False}]
    for name in ("redis", "postgres", "flower"):
        assert "healthcheck" in services[name]
    for name in ("worker", "worker-qwen-vl"):
        gpu = services[name]["deploy"]["resources"]["reservations"]["devices"][0]
        assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    text = (ROOT / "docker-compose.yml").read_text()
    assert "DISCORD_TOKEN=" not in text and "POSTGRES_PASSWORD:?" in text  # secrets only from .env
    assert "/.env" in (ROOT / ".gitignore").read_text()


def _compose_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="the docker compose plugin is not installed")
def test_docker_compose_config_validates(tmp_path):
    env = tmp_path / ".env"
    env.write_text((ROOT / ".env.example").read_text())
    run = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "--env-file", str(env),
                          "--profile", "discord", "--profile", "wechat", "--profile", "qwen-vl", "config", "-q"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr


def test_the_qwen_vl_image_installs_the_pinned_stack():
    """The Qwen-VL-Chat image installs the qwen-vl extra, whose transformers passes the start-up check."""
    import tomllib

    from worker.engines.remote_code import PINNED_TRANSFORMERS, check_transformers

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"transformers=={PINNED_TRANSFORMERS}" in extras["qwen-vl"]
    check_transformers(PINNED_TRANSFORMERS)
    dockerfile = (ROOT / "docker/worker-qwen-vl.Dockerfile").read_text()
    assert "'.[qwen-vl]'" in dockerfile and "QVL_ENGINE=qwen-vl" in dockerfile
    assert "torch==2.13.0" in dockerfile
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker-qwen-vl"]
    assert service["environment"]["QVL_ENGINE"] == "qwen-vl"  # not overridden by .env's QVL_MODEL
    assert service["environment"]["QVL_MODEL"].startswith("${QVL_QWEN_VL_MODEL:-Qwen/Qwen-VL-Chat}")


def test_every_image_copies_every_package_the_project_installs():
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    names = {p.rstrip("*") for p in packages["include"]}
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        copied = {line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("COPY ")}
        assert names <= copied, f"{dockerfile.name} does not copy {sorted(names - copied)}"
