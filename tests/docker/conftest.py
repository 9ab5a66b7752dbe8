"""The image tests' engine and image: one private `dockerd` for the session, stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dockerkit
import pytest


@pytest.fixture(scope="session")
def docker() -> Iterator[dockerkit.Engine]:
    with dockerkit.engine() as engine:
        yield engine


@pytest.fixture(scope="session")
def base(docker: dockerkit.Engine) -> str:
    return dockerkit.base_image(docker)


@pytest.fixture(scope="session")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the project folder with local state planted in it."""
    return dockerkit.build_context(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="session")
def image(docker: dockerkit.Engine, base: str, context: Path) -> str:
    """The product image, CPU build, on the stand-in base."""
    docker.docker(
        "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
        "--build-arg", "REQUIRE_CUDA=0", "-t", dockerkit.IMAGE, str(context), timeout=900,
    )  # fmt: skip
    return dockerkit.IMAGE
