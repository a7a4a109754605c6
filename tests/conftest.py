"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch

from tests.micro import images_for, micro_model
from vit_interp import HookedViT


@pytest.fixture
def model() -> HookedViT:
    return micro_model()


@pytest.fixture
def images(model: HookedViT) -> torch.Tensor:
    return images_for(model)
