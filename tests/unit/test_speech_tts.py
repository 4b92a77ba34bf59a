"""Text to speech: sentence chunking, the Synthesizer on a fake engine (voice resolution, one chunk per
sentence, speed), and the real engines (hibari's packaged voice, espeak-ng) on short sentences."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from modalities.speech import tts
from modalities.speech.config import OUTPUT_RATE, SpeechConfig, VoiceSpec
from modalities.speech.tts import EspeakEngine, HibariEngine, Synthesizer, UnknownVoice, split_sentences

# -- split_sentences -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there. How are you?", ["Hello there.", "How are you?"]),
        ("Wait! Really?! Yes… Fine.", ["Wait!", "Really?!", "Yes…", "Fine."]),
        ("It costs 3.50 dollars. Pay now.", ["It costs 3.50 dollars.", "Pay now."]),
        ("Bring fruit, e.g. apples. Or not.", ["Bring fruit, e.g. apples.", "Or not."]),
        ("Use a box, e.g. A crate. Done.", ["Use a box, e.g. A crate.", "Done."]),
        ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
        ("I met J. K. Rowling today. Nice.", ["I met J. K. Rowling today.", "Nice."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("Hmm... maybe later. Sure.", ["Hmm... maybe later.", "Sure."]),
        ("Line one\nLine two\n\n  Line three.  ", ["Line one", "Line two", "Line three."]),
        ("The doctor said no. Then", ["The doctor said no.", "Then"]),
        ("No end punctuation", ["No end punctuation"]),
        ("   \n\n  ", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_long_sentence_splits_at_the_last_comma_before_the_cap() -> None:
    first = "word " * 10 + "more words here,"  # 66 characters up to and including the comma
    text = first + " " + "tail " * 5 + "end."
    assert split_sentences(text, max_chars=80) == [first, "tail " * 5 + "end."]


def test_long_sentence_without_commas_splits_at_the_last_space() -> None:
    text = " ".join(f"w{i:02d}" for i in range(40)) + "."  # 160 characters
    chunks = split_sentences(text, max_chars=50)
    assert all(len(c) <= 50 for c in chunks) and len(chunks) == 4
    assert " ".join(chunks) == text  # nothing lost, every cut at a space
    assert chunks[0] == " ".join(f"w{i:02d}" for i in range(12))  # 47 chars: the 13th word would pass 50


def test_a_word_longer_than_the_cap_is_cut_hard() -> None:
    assert split_sentences("x" * 25, max_chars=10) == ["x" * 10, "x" * 10, "x" * 5]


def test_an_early_comma_is_not_used_for_a_tiny_chunk() -> None:
    text = "Yes, " + "and then " * 12  # the only comma sits at 3 of a 60-character cap
    chunks = split_sentences(text, max_chars=60)
    assert len(chunks[0]) > 30 and all(len(c) <= 60 for c in chunks)


def test_max_chars_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        split_sentences("Hi.", max_chars=0)


# -- Synthesizer with a fake engine --------------------------------------------------------------


class FakeEngine:
    """Returns 10 samples per character, so each call's output can be told apart; records calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[str, str, float]] = []

    def synthesize(self, text: str, voice: str, speed: float) -> np.ndarray:
        self.calls.append((text, voice, speed))
        return np.full(10 * len(text), 0.1, dtype=np.float32)

    def voices(self) -> list[str]:
        return ["v"]


CONFIG = SpeechConfig(
    voices={
        "nova": VoiceSpec(engine="hibari", voice="heart"),
        "alloy": VoiceSpec(engine="hibari", voice="heart", speed=1.5),
        "deutsch": VoiceSpec(engine="espeak", voice="de", speed=0.5),
    },
    default_voice="alloy",
    max_input_chars=200,
)


@pytest.fixture
def engines() -> dict[str, FakeEngine]:
    return {"hibari": FakeEngine("hibari"), "espeak": FakeEngine("espeak")}


def test_voice_resolves_to_its_engine_and_engine_voice(engines: dict[str, FakeEngine]) -> None:
    synth = Synthesizer(CONFIG, engines)
    synth.synthesize("Hallo Welt.", "deutsch")
    assert engines["espeak"].calls == [("Hallo Welt.", "de", 0.5)] and engines["hibari"].calls == []


def test_unknown_voice_lists_the_configured_names_sorted(engines: dict[str, FakeEngine]) -> None:
    synth = Synthesizer(CONFIG, engines)
    with pytest.raises(UnknownVoice, match=r"'shimmer'.*alloy, deutsch, nova$") as err:
        synth.stream("Hi.", "shimmer")  # raised on the call, before any chunk is asked for
    assert isinstance(err.value, ValueError)
    assert synth.voice_names() == ["alloy", "deutsch", "nova"]


def test_one_chunk_per_sentence_in_order(engines: dict[str, FakeEngine]) -> None:
    text = "First one. Second, longer one! Third?"
    chunks = list(Synthesizer(CONFIG, engines).stream(text, "nova"))
    assert [c.size for c in chunks] == [10 * len(s) for s in ("First one.", "Second, longer one!", "Third?")]
    assert [call[0] for call in engines["hibari"].calls] == ["First one.", "Second, longer one!", "Third?"]


def test_speed_is_the_request_speed_times_the_voice_speed(engines: dict[str, FakeEngine]) -> None:
    synth = Synthesizer(CONFIG, engines)
    synth.synthesize("Hi.", "nova", speed=2.0)
    synth.synthesize("Hi.", "alloy", speed=2.0)
    assert [call[2] for call in engines["hibari"].calls] == [2.0, 3.0]


def test_synthesize_concatenates_the_chunks(engines: dict[str, FakeEngine]) -> None:
    audio = Synthesizer(CONFIG, engines).synthesize("One. Two.", "nova")
    assert audio.dtype == np.float32 and audio.shape == (10 * (4 + 4),)


def test_chunks_with_nothing_speakable_are_skipped(engines: dict[str, FakeEngine]) -> None:
    chunks = list(Synthesizer(CONFIG, engines).stream("Hello.\n...\n—\nWorld.", "nova"))
    assert len(chunks) == 2
    assert [call[0] for call in engines["hibari"].calls] == ["Hello.", "World."]


@pytest.mark.parametrize(("text", "speed", "match"), [("", 1.0, "empty"), (" \n\t", 1.0, "empty"),
                                                      ("x" * 201, 1.0, "201 characters"), ("Hi.", 0.0, "speed"),
                                                      ("Hi.", float("nan"), "speed")])  # fmt: skip
def test_bad_requests_raise_value_error_on_the_call(engines: dict[str, FakeEngine], text: str, speed: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Synthesizer(CONFIG, engines).stream(text, "nova", speed)
    assert engines["hibari"].calls == []


def test_default_engines_are_built_only_when_a_voice_uses_them(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []

    def fake_espeak() -> FakeEngine:
        built.append("espeak")
        return FakeEngine("espeak")

    monkeypatch.setattr(tts, "EspeakEngine", fake_espeak)
    synth = Synthesizer(CONFIG, {"hibari": FakeEngine("hibari")})
    synth.synthesize("Hi.", "nova")
    assert built == []
    synth.synthesize("Hallo.", "deutsch")
    synth.synthesize("Tschüss.", "deutsch")
    assert built == ["espeak"]  # once, then reused


# -- real engines --------------------------------------------------------------------------------

SENTENCE = "Hello there, how are you today?"


@pytest.fixture(scope="module")
def hibari() -> HibariEngine:
    return HibariEngine(threads=1)


def test_hibari_speaks_at_24khz_for_a_plausible_duration(hibari: HibariEngine) -> None:
    audio = hibari.synthesize(SENTENCE, "heart", 1.0)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.0 < audio.size / OUTPUT_RATE < 4.0  # six words
    assert 0.05 < np.abs(audio).max() <= 1.0  # speech, not silence


def test_hibari_speed_outside_its_range_is_resampled(hibari: HibariEngine) -> None:
    at_2 = hibari.synthesize(SENTENCE, "heart", 2.0)
    at_4 = hibari.synthesize(SENTENCE, "heart", 4.0)  # hibari at 2.0, then played 2x faster
    at_1 = hibari.synthesize(SENTENCE, "heart", 1.0)
    assert at_2.size < 0.75 * at_1.size
    assert at_4.size == pytest.approx(at_2.size / 2, abs=2)
    assert hibari.synthesize(SENTENCE, "heart", 0.25).size == pytest.approx(
        hibari.synthesize(SENTENCE, "heart", 0.5).size * 2, abs=2
    )


def test_hibari_refuses_voices_that_would_download(hibari: HibariEngine) -> None:
    assert hibari.voices() == ["heart"]
    with pytest.raises(ValueError, match="'emma'.*heart"):
        hibari.synthesize(SENTENCE, "emma", 1.0)


def test_hibari_is_safe_to_call_from_several_threads() -> None:
    engine = HibariEngine(threads=1, seed=3)  # fresh: the first calls race to load the model
    texts = ["The box was crushed.", "Where is my refund?", "Zyxquor blorfed the parcel.", "It costs 3.50 dollars."] * 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda t: engine.synthesize(t, "heart", 1.0), texts))
    alone = [engine.synthesize(t, "heart", 1.0) for t in texts]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))  # a fixed seed: bit-identical


@pytest.fixture(scope="module")
def espeak() -> EspeakEngine:
    return EspeakEngine()


def test_espeak_speaks_at_24khz_for_a_plausible_duration(espeak: EspeakEngine) -> None:
    audio = espeak.synthesize(SENTENCE, "en-us", 1.0)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.0 < audio.size / OUTPUT_RATE < 4.0
    assert 0.05 < np.abs(audio).max() <= 1.0
    faster = espeak.synthesize(SENTENCE, "en-gb+m3", 2.0)  # a variant, at 350 wpm
    assert faster.size < 0.75 * audio.size


def test_espeak_voices_are_its_languages(espeak: EspeakEngine) -> None:
    voices = espeak.voices()
    assert {"en-us", "en-gb", "de", "fr"} <= set(voices) and voices == sorted(voices)
    with pytest.raises(ValueError, match="'klingon'"):
        espeak.synthesize(SENTENCE, "klingon", 1.0)


def test_every_default_espeak_voice_is_available(espeak: EspeakEngine) -> None:
    # "fr" and "en" appear only in the Other Languages column of `espeak-ng --voices`
    configured = {spec.voice.split("+")[0] for spec in SpeechConfig().voices.values() if spec.engine == "espeak"}
    assert configured and configured <= set(espeak.voices())
    assert {"fr", "en"} <= set(espeak.voices())


def test_synthesizer_on_the_real_engines_streams_sentences() -> None:
    synth = Synthesizer(CONFIG)
    chunks = list(synth.stream("Good morning. Guten Tag.", "nova"))
    assert len(chunks) == 2 and all(c.dtype == np.float32 and c.size > OUTPUT_RATE // 4 for c in chunks)
    assert synth.synthesize("Guten Tag.", "deutsch").size > OUTPUT_RATE // 2


STREAMED = [
    "Your order ships today. It arrives on Monday! Anything else?",
    "Dr. Smith paid $3.50, e.g. for J. K. Rowling's book... and then? Wait... what happened next.",
    "Line one\nLine two. Still line two\n\nThe end",
    "A long sentence, " * 30 + "over.",
]


@pytest.mark.parametrize("text", STREAMED)
@pytest.mark.parametrize("piece", [1, 3, 7])
def test_streamed_sentences_match_split_sentences(text: str, piece: int) -> None:
    """Fed a few characters at a time (as tokens stream), the sentences are those of the whole text,
    and each leaves as soon as the next word's first letter is in."""
    from modalities.speech.sentences import SentenceStream

    stream, out = SentenceStream(max_chars=120), []
    for i in range(0, len(text), piece):
        out += stream.feed(text[i : i + piece])
    assert out + stream.flush() == split_sentences(text, max_chars=120)


def test_a_sentence_leaves_before_the_text_ends() -> None:
    from modalities.speech.sentences import SentenceStream

    stream = SentenceStream()
    assert stream.feed("Your order ships today. ") == []  # the next word's case is not known yet
    assert stream.feed("It") == ["Your order ships today."]
    assert stream.feed(" arrives Monday.") == [] and stream.flush() == ["It arrives Monday."]


def test_the_first_piece_may_end_at_a_clause() -> None:
    from modalities.speech.sentences import SentenceStream

    stream, out = SentenceStream(first_clause_words=4), []
    for piece in ["Thanks for calling ", "Northwind, ", "your parcel, ", "which left today, ", "arrives soon. ", "Bye."]:
        out += stream.feed(piece)
    assert out + stream.flush() == ["Thanks for calling Northwind,", "your parcel, which left today, arrives soon.", "Bye."]
    short = SentenceStream(first_clause_words=4)
    assert short.feed("Yes, of course. ") == [] and short.feed("I") == ["Yes, of course."]  # under 4 words: no cut
    assert SentenceStream(first_clause_words=4).feed("It costs 1,250 dollars in total today") == []  # no space: no clause


def test_trim_silence_keeps_a_lead_in_and_a_pause() -> None:
    from modalities.speech.tts import LEAD_IN_S, PAUSE_S, trim_silence

    rate = 24_000
    tone = 0.5 * np.sin(np.arange(rate) / 10).astype(np.float32)
    audio = np.concatenate([np.zeros(rate // 2, np.float32), tone, np.zeros(rate, np.float32)])
    trimmed = trim_silence(audio)
    assert abs(len(trimmed) - (rate + (LEAD_IN_S + PAUSE_S) * rate)) <= 2
    assert abs(len(trim_silence(audio, last=True)) - (len(audio) - rate // 2 + int(LEAD_IN_S * rate))) <= 2
    silent = np.zeros(100, np.float32)
    assert trim_silence(silent) is silent


@pytest.mark.parametrize("text", ["1" * 37, "$" + "9" * 40, "1" + ",000" * 12, "Call 1234567890123456789012 now."])
def test_hibari_reads_numbers_past_its_scales(text: str) -> None:
    """hibari's number reader stops at 10**36 (IndexError): longer digit runs are read digit by digit."""
    audio = HibariEngine().synthesize(text, "heart", 1.0)
    assert audio.dtype == np.float32 and len(audio) > OUTPUT_RATE


def test_numbers_a_person_reads_as_numbers_stay() -> None:
    from modalities.speech.tts import _read_long_numbers

    assert _read_long_numbers("Pay 1,250.50 by card 1234 5678.") == "Pay 1,250.50 by card 1234 5678."
    assert _read_long_numbers("id " + "12" * 10) == "id " + " ".join("12" * 10)


@pytest.mark.parametrize("text", ["\x08\u00b9", "\u00b9" * 37, "Call \u200b\u2460 now.", "~\u2081"])
def test_hibari_reads_digits_that_are_not_decimal(text: str) -> None:
    """Superscript, subscript and circled digits once failed hibari's number reader (int('¹'))."""
    assert HibariEngine().synthesize(text, "heart", 1.0).size > 0
