from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wrk_ai_inference.config import load_settings, parse_size
from wrk_ai_inference.errors import ConfigError

from .helpers import ROOT


def test_layers_defaults_file_env_cli(tmp_path: Path) -> None:
    (tmp_path / "common.json").write_text(json.dumps({"port": 9000, "maxConcurrentInferences": 3,
                                                      "memoryLimit": "1GB"}))
    s = load_settings(tmp_path, environ={})
    assert (s.port, s.max_concurrent_inferences, s.memory_limit) == (9000, 3, 1_000_000_000)
    assert s.inference_timeout == 30_000 and s.auto_load is False
    env = {"WRK_AI_INFERENCE_PORT": "9100", "WRK_AI_INFERENCE_PRELOAD": "a,b",
           "WRK_AI_INFERENCE_AUTO_LOAD": "true"}
    s = load_settings(tmp_path, environ=env)
    assert (s.port, s.preload, s.auto_load) == (9100, ["a", "b"], True)
    s = load_settings(tmp_path, {"port": "9200", "preload": ["c"]}, environ=env)
    assert (s.port, s.preload) == (9200, ["c"])


def test_repo_config_is_valid() -> None:
    s = load_settings(ROOT / "config", environ={})
    assert s.port == 8001 and s.max_concurrent_inferences == 10 and s.model_cache_size == 5
    assert s.memory_limit == 4_000_000_000 and s.health_check_interval == 10_000


@pytest.mark.parametrize(("layer", "message"), [
    ({"file": {"maxConcurentInferences": 3}}, "unknown config key 'maxConcurentInferences'"),
    ({"file": {"port": "eighty"}}, "config key 'port'"),
    ({"file": {"memoryLimit": "lots"}}, "config key 'memoryLimit'"),
    ({"file": {"maxConcurrentInferences": 0}}, "config key 'maxConcurrentInferences'"),
    ({"env": {"WRK_AI_INFERENCE_NOPE": "1"}}, "WRK_AI_INFERENCE_NOPE"),
    ({"env": {"WRK_AI_INFERENCE_INFERENCE_TIMEOUT": "-1"}}, "(from environment)"),
])
def test_bad_config_names_the_key(tmp_path: Path, layer: dict, message: str) -> None:
    (tmp_path / "common.json").write_text(json.dumps(layer.get("file", {})))
    with pytest.raises(ConfigError, match=r".*" + message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(tmp_path, environ=layer.get("env", {}))


def test_cli_refuses_bad_key_at_start() -> None:
    result = subprocess.run([sys.executable, "-m", "wrk_ai_inference.cli", "http",
                             "--max-concurrent-inferences", "-4"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "maxConcurrentInferences" in result.stderr


@pytest.mark.parametrize(("text", "value"), [("2GB", 2 * 10**9), ("512MiB", 512 * 2**20),
                                            ("1024", 1024), (4096, 4096), ("1.5 KB", 1500)])
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value
