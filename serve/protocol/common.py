"""What every protocol model shares."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

CROSS_FIELD = "cross_field"  # the error type of `refuse`: a rule over several fields


class Strict(BaseModel):
    """A request model: unknown fields are refused, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


def now() -> int:
    """OpenAI's `created`: Unix seconds."""
    return int(time.time())


def refuse(message: str, param: str) -> PydanticCustomError:
    """The error a model validator raises for a rule over several fields: the 400 names `param`."""
    return PydanticCustomError(CROSS_FIELD, message, {"param": param})
