"""Prompt emphasis, CLIP tokenization and chunking, with known CLIP token ids as references."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpu_executor.diffusion.text.encoder import LayerChoice, encode_chunks
from gpu_executor.diffusion.text.prompt import parse_prompt
from gpu_executor.diffusion.text.tokenizer import (
    END_TOKEN,
    START_TOKEN,
    ClipTokenizer,
    TokenizerFilesMissing,
    tokenizer_dir,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "expected"), [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat)", [("a ", 1.0), ("cat", pytest.approx(1.1))]),
    ("((cat))", [("cat", pytest.approx(1.21))]),
    ("(cat:1.5) dog", [("cat", 1.5), (" dog", 1.0)]),
    ("((cat:0.5))", [("cat", 0.5)]),
    ("(a (b:2.0) c)", [("a ", pytest.approx(1.1)), ("b", 2.0), (" c", pytest.approx(1.1))]),
    ("\\(literal\\) (x)", [("(literal) ", 1.0), ("x", pytest.approx(1.1))]),
    ("[not special]", [("[not special]", 1.0)]),
    ("(time: 12:30)", [("time: 12", 30.0)]),  # the last colon wins when what follows parses, as in ComfyUI
    ("(ratio a:b)", [("ratio a:b", pytest.approx(1.1))]),
    ("(unclosed", [("(unclosed", 1.0)]),
])
def test_emphasis(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt(text) == expected


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ClipTokenizer:
    return ClipTokenizer(tokenizer_dir(cache_dir=tmp_path_factory.mktemp("cache")))


def test_known_clip_ids(tokenizer: ClipTokenizer) -> None:
    chunks = tokenizer.tokenize("a photo of a cat")
    assert len(chunks) == 1 and len(chunks[0]) == 77
    # The widely published CLIP ids: a=320, photo=1125, of=539, cat=2368; SD1 pads with the end token.
    assert [t.token for t in chunks[0][:7]] == [START_TOKEN, 320, 1125, 539, 320, 2368, END_TOKEN]
    assert all(t.token == END_TOKEN and t.weight == 1.0 for t in chunks[0][7:])


def test_weights_follow_words(tokenizer: ClipTokenizer) -> None:
    chunk = tokenizer.tokenize("a (cat:1.5)")[0]
    assert [(t.token, t.weight, t.word) for t in chunk[1:3]] == [(320, 1.0, 1), (2368, 1.5, 2)]


def test_long_prompts_chunk_at_75_tokens_keeping_words_whole(tokenizer: ClipTokenizer) -> None:
    chunks = tokenizer.tokenize(" ".join(["cat"] * 80))
    assert len(chunks) == 2 and all(len(c) == 77 for c in chunks)
    assert sum(t.token == 2368 for t in chunks[0]) == 75 and sum(t.token == 2368 for t in chunks[1]) == 5
    assert chunks[1][0].token == START_TOKEN and chunks[1][6].token == END_TOKEN


def test_missing_tokenizer_files_name_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(TokenizerFilesMissing, match=r"vocab\.json"):
        tokenizer_dir(configured=tmp_path)


class TinyText(torch.nn.Module):
    """A stand-in text model with CLIPTextModel's outputs, to check the weighting arithmetic exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(49408, 4)
        self.final_layer_norm = torch.nn.LayerNorm(4)

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False):  # type: ignore[no-untyped-def]
        from types import SimpleNamespace

        hidden = self.embed(input_ids) + torch.arange(input_ids.shape[1])[None, :, None] * 0.01
        return SimpleNamespace(last_hidden_state=self.final_layer_norm(hidden), pooler_output=hidden[:, 0],
                               hidden_states=(hidden * 0.5, hidden))


def test_weighting_moves_tokens_relative_to_the_empty_prompt(tokenizer: ClipTokenizer) -> None:
    model = TinyText()
    plain, _ = encode_chunks(model, tokenizer, tokenizer.tokenize("a cat"))
    weighted, _ = encode_chunks(model, tokenizer, tokenizer.tokenize("a (cat:2.0)"))
    empty, _ = encode_chunks(model, tokenizer, [[*tokenizer.tokenize("")[0]]])
    assert plain.shape == (1, 77, 4)
    expected = (plain[0, 2] - empty[0, 2]) * 2.0 + empty[0, 2]
    torch.testing.assert_close(weighted[0, 2], expected)
    torch.testing.assert_close(weighted[0, 1], plain[0, 1])
    penultimate, _ = encode_chunks(model, tokenizer, tokenizer.tokenize("a cat"), LayerChoice(-2, layer_norm=False))
    torch.testing.assert_close(penultimate, model(torch.tensor([[t.token for t in tokenizer.tokenize("a cat")[0]]])
                                                  ).hidden_states[0].detach())
