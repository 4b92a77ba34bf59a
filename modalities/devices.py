"""Torch device strings, validated where configs are parsed, without importing torch.

Configs are validated in processes that never load a model (the HTTP ingress), so the check is
syntactic: a device type torch knows, optionally with an index ("cpu", "cuda", "cuda:1", "mps").
Whether that device exists here is the runtime's business when it loads the model.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

# The subset of `torch.device`'s types a model here could run on (torch also parses "xla", "ipu",
# "vulkan" and friends, none of which this project supports).
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "hpu", "mtia", "meta")
# What `torch.device` parses: the type, then optionally ":" and an index without leading zeros.
_DEVICE = re.compile(rf"(?:{'|'.join(DEVICE_TYPES)})(?::(?:0|[1-9][0-9]*))?")


def validate_device(value: str) -> str:
    """`value` if it names a torch device ("cpu", "cuda", "cuda:1"); ValueError otherwise."""
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"not a torch device: {value!r}; use one of {', '.join(DEVICE_TYPES)}, optionally ':N'")
    return value


TorchDevice = Annotated[str, AfterValidator(validate_device)]
