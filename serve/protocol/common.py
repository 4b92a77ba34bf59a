"""What every protocol model shares."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A request model: unknown fields are refused, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


def now() -> int:
    """OpenAI's `created`: Unix seconds."""
    return int(time.time())
