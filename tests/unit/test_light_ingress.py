"""The ingress process stays light: importing its module (and the app builder that the replica
also imports) loads no torch, transformers, whisper, open_clip or onnxruntime."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "whisper", "open_clip", "onnxruntime")


def test_ingress_imports_no_model_code() -> None:
    code = (
        "import sys\n"
        "import serve.http.ingress, serve.app, serve.config\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"the ingress imported {result.stdout.strip()}"
