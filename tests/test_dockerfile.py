"""The Dockerfile's command, run directly with the Dockerfile's environment (no Docker engine here)."""

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import aiohttp

from tests.test_recovery import free_port, wait_healthy

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def dockerfile_env_and_cmd(data_dir: Path, app_dir: Path) -> tuple[dict[str, str], list[str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for part in shlex.split(line[4:]):
                key, _, value = part.partition("=")
                env[key] = value.replace("/data", str(data_dir)).replace("/app", str(app_dir))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    return env, cmd


def test_the_image_is_slim_runs_as_non_root_and_checks_health():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "EXPOSE 8080" in text and "/healthz" in text and "HEALTHCHECK" in text


async def test_the_container_command_serves_and_becomes_healthy(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    env, cmd = dockerfile_env_and_cmd(data, DOCKERFILE.parent)
    assert cmd == ["csbot", "serve"]
    port = free_port()
    env.update(CSBOT_PORT=str(port), CSBOT_APPID="wxdocker", CSBOT_TOKEN="dockerToken")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CSBOT_")} | env
    proc = subprocess.Popen(cmd, env=full_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, f"http://127.0.0.1:{port}", proc)
        assert (data / "csbot.db").exists()  # the SQLite default lives in the data volume
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_dependencies_are_installed_in_a_layer_before_the_source():
    import sys
    import tomllib

    lines = [line for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
             if line.startswith(("COPY", "RUN"))]
    first_source = next(i for i, line in enumerate(lines) if line.startswith("COPY csbot"))
    deps = next(i for i, line in enumerate(lines) if "pip install -r" in line)
    assert lines[:deps] == ["COPY pyproject.toml ./"] and deps < first_source
    assert "pip install --no-deps ." in lines[first_source + 1:][1]
    # the layer's requirement list is exactly pyproject's dependencies
    command = re.search(r'python -c "(.*?)"', lines[deps]).group(1).replace("\\\\n", "\\n")
    out = subprocess.run([sys.executable, "-c", command], cwd=DOCKERFILE.parent, capture_output=True,
                         text=True, check=True).stdout.split()
    expected = tomllib.loads((DOCKERFILE.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [d.replace(" ", "") for d in expected] == out
