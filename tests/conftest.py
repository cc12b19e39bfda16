"""Shared fixtures. ``tiny_world`` builds the tiny world once per test session (about a minute on 2 cores)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from distillguard.world import WorldPaths, build_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> WorldPaths:
    """The "tiny" preset: corpus, prompts, tokenizer, teacher, reference.

    Built into a session temp dir, or reused from ``DISTILLGUARD_TEST_WORLD`` (a root built earlier by
    ``build_world("tiny", root=...)``) so that running one test file does not pay the build every time.
    """
    reuse = os.environ.get("DISTILLGUARD_TEST_WORLD")
    root = reuse if reuse else tmp_path_factory.mktemp("world") / "tiny"
    return build_world("tiny", root=root, progress=False)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real ``redis-server`` started for this test session (tests/redis_server.py)."""
    from redis_server import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a real PostgreSQL server started for this test session (tests/postgres_server.py)."""
    from postgres_server import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's PostgreSQL server, for this test alone."""
    import re
    import secrets

    from postgres_server import create_database

    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + secrets.token_hex(3)
    return create_database(postgres_server_url, name)
