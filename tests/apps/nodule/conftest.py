"""Shared tiny phantoms for the nodule tests (module-level cache: each is drawn once per session)."""

from __future__ import annotations

import dataclasses

import pytest

from apps.nodule.phantoms import PhantomConfig, make_phantom


def tiny_config(**changes) -> PhantomConfig:
    """``PhantomConfig.tiny()`` with parametric shapes (LIDC-independent) unless told otherwise."""
    return dataclasses.replace(PhantomConfig.tiny(), **{"use_lidc": False, **changes})


@pytest.fixture(scope="session")
def tiny_phantom():
    return make_phantom(tiny_config(), seed=7)


@pytest.fixture(scope="session")
def mixed_phantoms():
    """Several phantoms with many nodules of every type, juxtapleural and not."""
    cfg = tiny_config(n_nodules=(3, 4), type_weights=(1.0, 1.0, 1.0), juxtapleural_fraction=0.5)
    return [make_phantom(cfg, seed=s) for s in range(4)]
