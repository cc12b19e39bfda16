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
