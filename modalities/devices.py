"""Torch device strings, validated where configs are parsed."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import AfterValidator


def validate_device(value: str) -> str:
    """`value` if torch accepts it as a device ("cpu", "cuda", "cuda:1"); ValueError otherwise."""
    try:
        torch.device(value)
    except RuntimeError as e:
        raise ValueError(f"not a torch device: {value!r}") from e
    return value


TorchDevice = Annotated[str, AfterValidator(validate_device)]
