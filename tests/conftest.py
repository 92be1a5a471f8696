from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from .helpers import EXAMPLES, Worker, add_broken_model, make_repo, running_worker


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [m for m in ("digits", "mlp", "slow") if not (EXAMPLES / m / "model.onnx").exists()]
    if missing:
        raise pytest.UsageError(f"example models {missing} are missing: run `make setup`")


@pytest.fixture(scope="session")
def shared_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    make_repo(root, {"digits": "digits", "mlp": "mlp", "slow": "slow"})
    add_broken_model(root)
    return root


@pytest.fixture(scope="session")
def worker(shared_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One worker for the read-mostly API tests: digits, mlp and broken loaded, slow cold."""
    log = tmp_path_factory.mktemp("logs") / "shared-worker.log"
    with running_worker(shared_repo, log, preload=["digits", "mlp", "broken"]) as w:
        yield w


@pytest.fixture(scope="module")
def client(llm: Worker) -> openai.OpenAI:
    """The ``openai`` client on the ``llm`` worker of the module that asks for it."""
    return openai.OpenAI(base_url=llm.url + "/v1", api_key="unused", max_retries=0,
                         timeout=300)
