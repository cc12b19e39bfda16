"""Shared fixtures. ``tiny_world`` builds the tiny world once per test session (about a minute on 2 cores)."""

from __future__ import annotations

import pytest

from distillguard.world import WorldPaths, build_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> WorldPaths:
    """The "tiny" preset built into a session temp dir: corpus, prompts, tokenizer, teacher, reference."""
    return build_world("tiny", root=tmp_path_factory.mktemp("world") / "tiny", progress=False)
