"""DiVA's connector (`fusion.connector`) on a tiny random Whisper: shapes, padding, where it starts,
the vocabulary map, a checkpoint round trip and a training run through `fusion.train`."""

from __future__ import annotations

import pytest
import torch
from whisper.model import ModelDimensions, Whisper

from fusion.checkpoint import ModelIdentity, load_projector, save_projector
from fusion.connector import MAX_QUERIES, WhisperDecoderConnector, start_connector, vocabulary_map
from fusion.projectors import build_projector
from fusion.train import Example, TrainConfig, projector_loss, train
from tests.helpers.models import frozen_tiny_llama
from tests.helpers.tokenizer import tiny_chat_tokenizer

D_AUDIO, HIDDEN = 16, 32


@pytest.fixture(scope="module")
def tiny_whisper() -> Whisper:
    torch.manual_seed(0)
    dims = ModelDimensions(
        n_mels=80, n_audio_ctx=64, n_audio_state=D_AUDIO, n_audio_head=2, n_audio_layer=1,
        n_vocab=51865, n_text_ctx=MAX_QUERIES, n_text_state=D_AUDIO, n_text_head=2, n_text_layer=2,
    )
    model = Whisper(dims)
    with torch.no_grad():  # Whisper leaves its positional table uninitialised (loaded from a checkpoint)
        model.decoder.positional_embedding.normal_(0, 0.1)
    return model


def _connector(stack: int = 4, window: int = 0) -> WhisperDecoderConnector:
    torch.manual_seed(1)
    return WhisperDecoderConnector(D_AUDIO, HIDDEN, stack=stack, n_layer=2, n_head=2, window=window)


def test_one_token_per_stack_frames_and_the_kind_string():
    connector = _connector(stack=4)
    out = connector(torch.randn(2, 9, D_AUDIO))
    assert out.shape == (2, 3, HIDDEN) and connector.num_output_tokens(9) == 3
    built = build_projector("whisperdec2", D_AUDIO, HIDDEN, n_layer=2, n_head=2)
    assert isinstance(built, WhisperDecoderConnector) and built.stack == 2
    with pytest.raises(ValueError, match="whisperdec"):
        build_projector("whisperdecoder", D_AUDIO, HIDDEN)
    with pytest.raises(ValueError, match="queries"):
        connector(torch.randn(1, 4 * MAX_QUERIES + 1, D_AUDIO))


@pytest.mark.parametrize("window", [0, 2])
def test_a_clip_gives_the_same_tokens_alone_and_in_a_padded_batch(window):
    connector = _connector(window=window).eval()
    short, long = torch.randn(10, D_AUDIO), torch.randn(23, D_AUDIO)
    batch = torch.zeros(2, 23, D_AUDIO)
    batch[0, :10], batch[1] = short, long
    with torch.no_grad():
        alone = connector(short[None])[0]
        batched = connector(batch, [10, 23])
        unmasked = connector(batch)  # without lengths the padding is read, and the tokens change
    assert torch.allclose(batched[0, :3], alone, atol=1e-5)
    assert torch.allclose(batched[1], connector(long[None])[0], atol=1e-5)
    assert not torch.allclose(unmasked[0, :3], alone, atol=1e-3)


def test_a_windowed_query_reads_only_frames_near_its_own():
    connector = _connector(stack=4, window=2)
    mask = connector._window_mask(3, 12, torch.device("cpu"))
    assert mask[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert mask[1].nonzero().flatten().tolist() == list(range(2, 10))
    # A one-layer connector has no query-to-query path for far frames to take: only the window counts.
    one = WhisperDecoderConnector(D_AUDIO, HIDDEN, stack=4, n_layer=1, n_head=2, window=2).eval()
    one.blocks[0].attn.out.weight.data.zero_()  # no mixing between queries either
    one.blocks[0].attn.out.bias.data.zero_()
    frames = torch.randn(1, 12, D_AUDIO)
    changed = frames.clone()
    changed[0, 10:] += 5.0  # frames 10-11: outside query 0's window, inside query 2's
    with torch.no_grad():
        before, after = one(frames)[0], one(changed)[0]
    assert torch.allclose(before[0], after[0], atol=1e-6) and not torch.allclose(before[2], after[2], atol=1e-3)


def test_it_starts_from_whispers_decoder(tiny_whisper):
    connector = _connector()
    connector.init_from_whisper(tiny_whisper.decoder)
    for name, tensor in tiny_whisper.decoder.blocks.state_dict().items():
        assert torch.equal(connector.blocks.state_dict()[name], tensor), name
    decoder = tiny_whisper.decoder
    expected = decoder.positional_embedding + decoder.token_embedding.weight.mean(0)
    assert torch.allclose(connector.queries, expected)


def test_the_vocabulary_map_recovers_a_linear_relation_on_shared_spellings():
    gen = torch.Generator().manual_seed(0)
    whisper_table = torch.randn(300, 8, generator=gen)
    truth = torch.randn(8, 12, generator=gen)
    spellings = [f"w{i}" for i in range(300)]
    llm_strings = [None, *spellings[:200][::-1]]  # 200 shared tokens, another order, a special token
    llm_table = torch.randn(201, 12, generator=gen)
    llm_table[1:] = (whisper_table[:200] @ truth).flip(0)
    mapping, shared = vocabulary_map(whisper_table, spellings, llm_table, llm_strings)
    assert shared == 200 and torch.allclose(mapping, truth, atol=1e-3)
    with pytest.raises(ValueError, match="no token alike"):
        vocabulary_map(whisper_table, spellings, llm_table, [None, *(f"x{i}" for i in range(200))])


def test_start_connector_fits_the_output_map_on_real_tokenizers(tiny_whisper):
    tokenizer = tiny_chat_tokenizer()
    table = torch.randn(len(tokenizer), HIDDEN)
    connector = _connector()
    before = connector.linear_2.weight.clone()
    shared = start_connector(connector, tiny_whisper, table, tokenizer)
    # The tiny tokenizer has one token per byte: the printable characters Whisper also has.
    assert 60 < shared < len(tokenizer)
    assert not torch.equal(connector.linear_2.weight, before)


def _examples(n: int) -> list[Example]:
    words = ["yes", "no", "stop", "go"]
    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(len(words), D_AUDIO, generator=gen)
    return [
        Example(features=codes[i % 4].repeat(8 + i % 3, 1) + 0.1 * torch.randn(8 + i % 3, D_AUDIO, generator=gen),
                target=words[i % 4], instruction="Repeat exactly what was said.")
        for i in range(n)
    ]


def test_training_a_connector_lowers_the_loss_and_survives_a_checkpoint(tiny_whisper, tmp_path):
    tokenizer = tiny_chat_tokenizer()
    model = frozen_tiny_llama(len(tokenizer), HIDDEN)
    examples = _examples(32)
    config = TrainConfig(
        data_dir=str(tmp_path), out_dir=str(tmp_path / "run"), connector="whisper_decoder", connector_window=3, steps=30, batch_size=8,
        lr=3e-3, warmup_steps=2, eval_every=30, checkpoint_every=30,
    )
    assert config.projector_kind == "whisperdec4"
    torch.manual_seed(0)
    result = train(config, model, tokenizer, examples, log=lambda _: None, progress=False, whisper_model=tiny_whisper)
    assert isinstance(result.projector, WhisperDecoderConnector) and result.projector.n_layer == 2
    started = _connector(window=3)
    start_connector(started, tiny_whisper, model.get_input_embeddings().weight, tokenizer)
    before, _ = projector_loss(examples[:8], started, model, tokenizer)
    after, _ = projector_loss(examples[:8], result.projector, model, tokenizer)
    assert after.item() < 0.85 * before.item(), (before.item(), after.item())

    ident = ModelIdentity("tiny", "0" * 64)
    path = save_projector(tmp_path / "ckpt", result.projector, kind="whisperdec4", encoder=ident, llm=ident, dtype="float32")
    loaded, meta = load_projector(path, llm_hidden_size=HIDDEN)
    assert meta["projector"] == {"kind": "whisperdec4", "in_dim": D_AUDIO, "out_dim": HIDDEN, "n_layer": 2, "n_head": 2, "window": 3}
    reloaded, _ = projector_loss(examples[:8], loaded, model, tokenizer)
    assert abs(reloaded.item() - after.item()) < 1e-4


def test_the_connector_is_for_audio_only(tmp_path):
    with pytest.raises(ValueError, match="audio only"):
        TrainConfig(data_dir=str(tmp_path), out_dir=str(tmp_path), modality="image", connector="whisper_decoder")
