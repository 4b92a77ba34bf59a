"""The Audio API's edge without Ray or a model: SRT/VTT rendering, the multipart form's validation,
the decoding options it turns into, and the bodies of each response format."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.datastructures import FormData, UploadFile

from modalities.audio.options import MAX_PROMPT_CHARS, TranscribeOptions
from modalities.audio.whisper_names import language_name
from modalities.errors import InputError
from serve.config import ChorusConfig
from serve.errors import InvalidRequest, NotFound
from serve.protocol.audio_form import parse_audio_form
from serve.protocol.subtitles import cue_text, srt, timestamp, vtt
from serve.services.transcription import TranscriptionService

# -- subtitles -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "srt_time", "vtt_time"),
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (2.54, "00:00:02,540", "00:00:02.540"),
        (1.0004, "00:00:01,000", "00:00:01.000"),
        (1.0006, "00:00:01,001", "00:00:01.001"),
        (59.9996, "00:01:00,000", "00:01:00.000"),  # rounding carries into the minutes
        (3599.9999, "01:00:00,000", "01:00:00.000"),  # and into the hours
        (3 * 3600 + 25 * 60 + 7.891, "03:25:07,891", "03:25:07.891"),
        (100 * 3600.0, "100:00:00,000", "100:00:00.000"),  # hours grow, never wrap
        (-0.2, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_timestamps(seconds: float, srt_time: str, vtt_time: str) -> None:
    assert timestamp(seconds, ",") == srt_time
    assert timestamp(seconds, ".") == vtt_time


SEGMENTS = [
    {"start": 0.0, "end": 2.5404, "text": "Please cancel my order."},
    {"start": 2.5404, "end": 4.1, "text": "   "},  # no text: no cue, and the numbering goes on
    {"start": 4.1, "end": 3661.25, "text": "Send me\n\n  a refund --> now. \n"},
]


def test_srt() -> None:
    assert srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:02,540\nPlease cancel my order.\n\n"
        "2\n00:00:04,100 --> 01:01:01,250\nSend me\na refund -> now.\n\n"
    )
    assert srt([]) == ""


def test_vtt() -> None:
    assert vtt(SEGMENTS) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:02.540\nPlease cancel my order.\n\n"
        "00:00:04.100 --> 01:01:01.250\nSend me\na refund -> now.\n\n"
    )
    assert vtt([]) == "WEBVTT\n\n"


def test_cue_text_keeps_lines_but_never_ends_a_cue_early() -> None:
    assert cue_text("one\r\ntwo\n\n\nthree") == "one\ntwo\nthree"
    assert "\n\n" not in srt([{"start": 0, "end": 1, "text": "a\n \nb"}]).split("\n", 2)[2].rstrip("\n")
    # an end before the start (never from whisper) is shown as a zero-length cue, not a negative one
    assert "00:00:02,000 --> 00:00:02,000" in srt([{"start": 2.0, "end": 1.0, "text": "x"}])


# -- the form ------------------------------------------------------------------------------------


def form(*fields: tuple[str, Any]) -> FormData:
    return FormData([("model", "whisper-1"), *fields])


def parse(*fields: tuple[str, Any], task: str = "transcribe"):
    return parse_audio_form(form(*fields), task)  # type: ignore[arg-type]


def refused(*fields: tuple[str, Any], param: str, task: str = "transcribe") -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(*fields, task=task)
    assert info.value.param == param and len(info.value.message) < 200
    return info.value


def test_form_defaults() -> None:
    req = parse()
    assert (req.task, req.model, req.response_format, req.temperature) == ("transcribe", "whisper-1", "json", 0.0)
    assert req.language is None and req.prompt is None and not req.words and req.segments
    assert req.options() == TranscribeOptions()


def test_form_fields_become_options() -> None:
    req = parse(
        ("language", "German"),
        ("prompt", "Chorus, refunds."),
        ("temperature", " 0.4 "),
        ("response_format", "verbose_json"),
        ("timestamp_granularities[]", "word"),
        ("timestamp_granularities[]", "segment"),
    )
    assert req.options() == TranscribeOptions(
        task="transcribe", language="de", prompt="Chorus, refunds.", temperature=0.4, word_timestamps=True
    )
    assert req.words and req.segments


@pytest.mark.parametrize(
    ("fields", "words", "segments"),
    [
        ([], False, True),
        ([("timestamp_granularities[]", "segment")], False, True),
        ([("timestamp_granularities", "word")], True, False),  # the bare name too; only words: no segments
        ([("timestamp_granularities[]", "word"), ("timestamp_granularities", "segment")], True, True),
        ([("timestamp_granularities[]", "")], False, True),  # an empty field is an absent one
    ],
)
def test_granularities(fields: list, words: bool, segments: bool) -> None:
    req = parse(("response_format", "verbose_json"), *fields)
    assert (req.words, req.segments, req.options().word_timestamps) == (words, segments, words)


def test_segment_granularity_outside_verbose_json_is_ignored_as_openai_does() -> None:
    for fmt in ("json", "text", "srt", "vtt"):
        assert not parse(("response_format", fmt), ("timestamp_granularities[]", "segment")).words


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ([("response_format", "srt-ish")], "response_format", "invalid_value"),
        ([("timestamp_granularities[]", "sentence")], "timestamp_granularities", "invalid_value"),
        ([("response_format", "verbose_json"), ("timestamp_granularities", "Word")], "timestamp_granularities", "invalid_value"),
        ([("timestamp_granularities[]", "word")], "timestamp_granularities", "invalid_value"),  # json by default
        ([("response_format", "srt"), ("timestamp_granularities[]", "word")], "timestamp_granularities", "invalid_value"),
        ([("temperature", "warm")], "temperature", "invalid_type"),
        ([("temperature", "nan")], "temperature", "invalid_value"),
        ([("temperature", "inf")], "temperature", "invalid_value"),
        ([("temperature", "1.01")], "temperature", "invalid_value"),
        ([("temperature", "-0.1")], "temperature", "invalid_value"),
        ([("prompt", "a" * (MAX_PROMPT_CHARS + 1))], "prompt", "prompt_too_long"),
        ([("language", "klingon")], "language", "invalid_language"),
        ([("language", UploadFile(file=None, filename="x"))], "language", "invalid_type"),  # type: ignore[arg-type]
    ],
)
def test_bad_fields_name_their_param(fields: list, param: str, code: str) -> None:
    assert refused(*fields, param=param).code == code


def test_bounds_are_inclusive_and_a_full_length_prompt_is_taken() -> None:
    assert parse(("temperature", "1")).temperature == 1.0 and parse(("temperature", "0")).temperature == 0.0
    assert len(parse(("prompt", "a" * MAX_PROMPT_CHARS)).prompt) == MAX_PROMPT_CHARS


def test_fields_a_route_does_not_take_are_refused() -> None:
    for name in ("include[]", "chunking_strategy", "temprature", "file\udcff"):
        assert refused((name, "x"), param=name.encode("ascii", "backslashreplace").decode()).code == "unsupported_parameter"
    for name in ("language", "timestamp_granularities[]", "timestamp_granularities"):  # OpenAI's translations take neither
        assert refused((name, "en"), param=name, task="translate").code == "unsupported_parameter"
    req = parse(("prompt", "Hi."), ("stream", "true"), task="translate")  # ignored for whisper, as OpenAI does
    assert req.options() == TranscribeOptions(task="translate", prompt="Hi.")
    assert refused(("temperature", "2"), param="temperature", task="translate").code == "invalid_value"


def test_options_validate_themselves() -> None:
    for bad, param in (
        ({"task": "summarize"}, "task"),
        ({"temperature": 1.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"prompt": "a" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
        ({"task": "translate", "word_timestamps": True}, "timestamp_granularities"),
    ):
        with pytest.raises(InputError) as info:
            TranscribeOptions(**bad)
        assert info.value.param == param
    assert TranscribeOptions(temperature=0.3).sampled and not TranscribeOptions().sampled
    denormal = TranscribeOptions(temperature=5e-324)  # whisper would divide the logits by it
    assert denormal.decoding_temperature == 0.0 and not denormal.sampled
    assert denormal.cache_key() == TranscribeOptions().cache_key()
    keys = {TranscribeOptions(**o).cache_key() for o in ({}, {"task": "translate"}, {"prompt": "x"}, {"temperature": 0.5},
                                                         {"word_timestamps": True}, {"language": "de"})}  # fmt: skip
    assert len(keys) == 6


# -- the service's bodies ------------------------------------------------------------------------


@dataclass
class FakeResult:
    transcript: str = "Please cancel my order."
    language: str | None = "en"
    duration_s: float = 3.0397
    segments: list | None = None
    words: list | None = None


SEGMENT = {"seek": 0, "start": 0.0, "end": 2.54, "text": "Please cancel my order.", "tokens": [50364, 2555],
           "temperature": 0.0, "avg_logprob": -0.31, "compression_ratio": 0.79, "no_speech_prob": 0.01}  # fmt: skip
WORDS = [{"word": " Please", "start": 0.0, "end": 0.24}, {"word": " cancel", "start": 0.24, "end": 0.72}]


class FakeEncoder:
    def __init__(self) -> None:
        self.calls: list[TranscribeOptions] = []

        class Method:
            async def remote(inner, data: bytes, options: TranscribeOptions) -> FakeResult:  # noqa: N805
                self.calls.append(options)
                return FakeResult(segments=[SEGMENT], words=WORDS if options.word_timestamps else None)

        self.transcribe = Method()


def run(*fields: tuple[str, Any], task: str = "transcribe") -> tuple[Any, FakeEncoder]:
    encoder = FakeEncoder()
    service = TranscriptionService(ChorusConfig(), encoder)
    req = parse(*fields, task=task)
    service.check(req.model)
    return asyncio.run(service.run(b"audio", req)), encoder


def test_plain_formats() -> None:
    assert run()[0] == {"text": "Please cancel my order."}
    assert run(("response_format", "text"))[0] == "Please cancel my order."
    assert run(("response_format", "srt"))[0] == "1\n00:00:00,000 --> 00:00:02,540\nPlease cancel my order.\n\n"
    assert run(("response_format", "vtt"))[0].startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.540\n")


def test_verbose_json_in_openais_shape() -> None:
    body, encoder = run(("response_format", "verbose_json"))
    assert body == {"task": "transcribe", "language": "english", "duration": 3.04, "text": "Please cancel my order.",
                    "segments": [{"id": 0, **SEGMENT}]}  # fmt: skip
    assert encoder.calls == [TranscribeOptions()]  # no word alignment unless asked

    words, encoder = run(("response_format", "verbose_json"), ("timestamp_granularities[]", "word"))
    assert "segments" not in words and words["words"] == WORDS and encoder.calls[0].word_timestamps
    both, _ = run(("response_format", "verbose_json"), ("timestamp_granularities[]", "word"), ("timestamp_granularities[]", "segment"))
    assert both["segments"] and both["words"] == WORDS


def test_translation_body_says_english() -> None:
    body, encoder = run(("response_format", "verbose_json"), task="translate")
    assert (body["task"], body["language"]) == ("translate", "english") and "words" not in body
    assert encoder.calls == [TranscribeOptions(task="translate")]


def test_models_and_empty_files_are_checked() -> None:
    service = TranscriptionService(ChorusConfig(), FakeEncoder())
    with pytest.raises(NotFound):
        service.check("gpt-4o-transcribe")
    with pytest.raises(InvalidRequest) as info:
        service.check("")
    assert info.value.code == "missing_model"
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(service.run(b"", parse()))
    assert info.value.param == "file"


def test_language_names_are_whispers() -> None:
    assert (language_name("en"), language_name("de"), language_name("yue")) == ("english", "german", "cantonese")
    assert language_name("xx") == "xx"
