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


ONE_SHOT: frozenset[str] = frozenset()  # services that run once and exit (none yet): no restart, no healthcheck


def _dockerfile_instruction(dockerfile: Path, name: str) -> str | None:
    """The last ``name`` instruction of ``dockerfile`` (continuation lines joined), or None."""
    found, lines = None, iter(dockerfile.read_text().splitlines())
    for line in lines:
        if line.startswith(name + " "):
            text = line
            while text.endswith("\\"):
                text = text[:-1] + " " + next(lines).strip()
            found = text[len(name) + 1:]
        elif line.startswith("FROM "):
            found = None  # a new stage starts with none
    return found


def _healthcheck(service: dict) -> str | None:
    """The command of the service's healthcheck, in compose or else in its image's Dockerfile."""
    check = service.get("healthcheck")
    if check is not None:
        assert not check.get("disable") and check.get("test") not in (["NONE"], "NONE")
        test = check["test"]
        return " ".join(test[1:]) if isinstance(test, list) else test
    if "build" in service:
        return _dockerfile_instruction(ROOT / service["build"]["dockerfile"], "HEALTHCHECK")
    return None


def _command(service: dict) -> list[str]:
    """What the service runs: compose's command, or else its Dockerfile's CMD."""
    if "command" in service:
        return service["command"]
    import json

    return json.loads(_dockerfile_instruction(ROOT / service["build"]["dockerfile"], "CMD"))


def test_every_long_running_service_restarts_and_has_a_healthcheck_that_means_something():
    """Each service checks what it is for: the databases answer, a worker answers a ping
    through the queue, a frontend is connected to its platform, Flower serves HTTP."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert ONE_SHOT <= set(services)
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        assert service.get("restart") == "unless-stopped", f"{name}: restart policy"
        check = _healthcheck(service)
        assert check, f"{name} has no healthcheck, in compose or in its Dockerfile"
        command = " ".join(_command(service)) if "build" in service or "command" in service else ""
        image = service.get("image", "")
        if image.startswith("redis:"):
            assert "redis-cli ping" in check
        elif image.startswith("postgres:"):
            assert "pg_isready" in check
        elif image.startswith("vllm/vllm-openai:"):
            assert "localhost:8000/health" in check  # the model is loaded and the server answers
        elif image.startswith("mher/flower:"):
            port = next(a for a in service["command"] if a.startswith("--port=")).split("=")[1]
            assert f"localhost:{port}/healthcheck" in check
        elif command == "qvl worker":
            # The ping names the node `qvl worker` starts (`-n qvl@<hostname>`) and goes through the broker.
            assert 'celery -A worker.main inspect ping -d "qvl@$(hostname)"' in check, name
            assert '"-n", f"qvl@{os.uname().nodename}"' in (ROOT / "cli/service.py").read_text()
        elif command in ("qvl discord", "qvl wechat", "qvl wecom"):
            platform = command.split()[1]
            assert f"bots.health {platform}" in check, name
            dockerfile = _dockerfile_instruction(ROOT / service["build"]["dockerfile"], "HEALTHCHECK")
            assert f"python -m bots.health {platform}" in dockerfile  # also when run without compose
        else:
            raise AssertionError(f"{name}: no rule for what its healthcheck should test")
    assert (ROOT / "worker/main.py").is_file() and "\napp = " in (ROOT / "worker/main.py").read_text()
    assert (ROOT / "bots/health.py").is_file()


def test_redis_persists_the_queue_append_only_on_a_volume():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server" and command[command.index("--appendonly") + 1] == "yes"
    [volume] = redis["volumes"]
    name, target = volume.split(":")[:2]
    assert target == "/data" and name in compose["volumes"]  # a named volume, not the container's layer


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


def test_the_vllm_profile_serves_the_model_and_points_a_worker_at_it():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    vllm, worker = services["vllm"], services["worker-vllm"]
    assert vllm["profiles"] == worker["profiles"] == ["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    flags = " ".join(vllm["command"])
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in flags and "--enable-prefix-caching" in flags
    assert "--limit-mm-per-prompt" in flags
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
    env = worker["environment"]
    assert env["QVL_ENGINE"] == "openai" and env["QVL_OPENAI_BASE_URL"] == "http://vllm:8000/v1"
    assert "QVL_WORKER_CONCURRENCY" not in env  # the openai engine's default: 32 turns in flight
    assert worker["depends_on"]["vllm"] == {"condition": "service_healthy"}
