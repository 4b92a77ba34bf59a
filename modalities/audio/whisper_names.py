"""openai-whisper's model names and language table, torch-free.

`import whisper` imports torch, and configs are validated where no model is loaded (the HTTP
ingress). So the two tables a `WhisperConfig` is checked against, `whisper._MODELS` and
`whisper.tokenizer.LANGUAGES` / `TO_LANGUAGE_CODE`, are read from whisper's installed source
(literal dicts, parsed with `ast`, nothing executed), once, on first use. The unit tests compare
them with whisper's own.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path

__all__ = ["available_models", "language_name", "normalize_language"]


def available_models() -> tuple[str, ...]:
    """Model names `whisper.load_model` downloads ("tiny", "base.en", "large-v3", ...)."""
    return tuple(_assigned_dict(_source("__init__.py"), "_MODELS"))


MAX_SHOWN_CHARS = 16


def normalize_language(value: str) -> str:
    """A whisper language code from a code or English name ("en", "English"); ValueError otherwise."""
    code = _language_codes().get(value.strip().lower())
    if code is None:
        shown = value[:MAX_SHOWN_CHARS].encode("ascii", "backslashreplace").decode()  # never echo input whole
        raise ValueError(f"unknown language {shown!r}; use an ISO code whisper knows, e.g. 'en', 'de', 'ja'")
    return code


def language_name(code: str) -> str:
    """Whisper's lower-case English name of a language code ("en" -> "english"), as OpenAI's
    verbose transcripts give it; the code itself if whisper has no name for it."""
    return _language_names().get(code, code)


@cache
def _language_names() -> dict[str, str]:
    return _assigned_dict(_source("tokenizer.py"), "LANGUAGES")


@cache
def _language_codes() -> dict[str, str]:
    """Every lower-case name whisper accepts for a language ("en", "english", "castilian") -> its code."""
    tokenizer = _source("tokenizer.py")
    languages = _assigned_dict(tokenizer, "LANGUAGES")  # code -> English name
    # TO_LANGUAGE_CODE is {**(name -> code for LANGUAGES), "burmese": "my", ...}: the aliases are its literal entries.
    aliases = _assigned_dict(tokenizer, "TO_LANGUAGE_CODE")
    return {**{name: code for code, name in languages.items()}, **aliases, **{code: code for code in languages}}


@cache
def _source(name: str) -> ast.Module:
    spec = importlib.util.find_spec("whisper")  # a top-level name: found without importing it
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("openai-whisper is not installed")
    return ast.parse((Path(spec.origin).parent / name).read_text(encoding="utf-8"))


def _assigned_dict(module: ast.Module, target: str) -> dict[str, str]:
    """The literal entries of the dict display assigned to `target` at module level (`**` parts skipped)."""
    for node in module.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(value, ast.Dict) and any(isinstance(t, ast.Name) and t.id == target for t in targets):
            return {ast.literal_eval(k): ast.literal_eval(v) for k, v in zip(value.keys, value.values) if k is not None}
    raise LookupError(f"openai-whisper's source no longer assigns {target} a dict; update modalities.audio.whisper_names")
