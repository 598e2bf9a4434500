"""Reading a ds_config file: UTF-8 text holding one JSON object. What is not is a UserError at line:column
that names the fix (comments, a trailing comma, a byte-order mark, UTF-16, NaN, nesting too deep)."""

import json
import re
from pathlib import Path

from zerotrain import UserError


def parse_config_text(text: str, path: str = "ds_config") -> dict:
    """The ds_config JSON object in `text`; a UserError with line:column otherwise."""

    def reject_constant(name):
        raise ValueError(f"{name} is not JSON; write a number")

    try:
        doc = json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as e:
        comment = re.search(r"^[ \t]*(//|/\*)|[,{\[\"\w][ \t]*(//|/\*)", text, re.MULTILINE)
        if comment:
            line = text.count("\n", 0, comment.start()) + 1
            marker = comment.lastindex  # the group of the // or /* that matched
            assert marker is not None  # each alternative of the pattern ends in a group
            col = comment.start(marker) - (text.rfind("\n", 0, comment.start(marker)) + 1) + 1
            raise UserError(
                f"{path}:{line}:{col}: JSON has no comments; remove the // lines (and /* */ blocks), then check again"
            ) from None
        if text.startswith("\ufeff"):
            raise UserError(
                f"{path}:1:1: the file starts with a byte-order mark (BOM); json.load (the HF Trainer, most "
                "tools) rejects it: save the file as UTF-8 without BOM"
            ) from None
        if not text.strip():
            raise UserError(
                f"{path}: the file is empty; a ds_config is a JSON object such as "
                '{"train_micro_batch_size_per_gpu": 1}'
            ) from None
        comma = _trailing_comma(text, e.pos)
        if comma is not None:
            line = text.count("\n", 0, comma) + 1
            col = comma - (text.rfind("\n", 0, comma) + 1) + 1
            raise UserError(
                f"{path}:{line}:{col}: trailing comma before {text[e.pos]!r}; JSON allows none: remove it"
            ) from None
        raise UserError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}; fix it there") from None
    except ValueError as e:  # NaN / Infinity, or an integer longer than Python's int_max_str_digits
        detail = "a number has thousands of digits; give a realistic value" if "digits" in str(e) else str(e)
        raise UserError(f"{path}: not valid JSON: {detail}") from None
    except RecursionError:
        raise UserError(
            f"{path}: nested too deeply for a ds_config (more than {MAX_DEPTH} levels): check the brackets"
        ) from None
    if not isinstance(doc, dict):
        kind = {type(None): "null", list: "list", str: "string", bool: "boolean"}.get(type(doc), "number")
        raise UserError(f"{path}: a ds_config is a JSON object ({{...}}), not a {kind}; wrap the settings in braces")
    depth = _depth(doc)
    if depth > MAX_DEPTH:  # the rules walk the config recursively; no DeepSpeed section nests past ~6 levels
        raise UserError(
            f"{path}: nested {depth} levels deep; a ds_config nests at most a few levels "
            f"(zero_optimization.offload_optimizer.device): check the brackets"
        )
    return doc


MAX_DEPTH = 32
MAX_FILE_BYTES = 16 * 2**20  # a ds_config is a few KB; DeepSpeed's largest examples are well under 100 KB


def _depth(doc) -> int:
    """Nesting depth of dicts and lists, without recursion (the input may be arbitrarily deep)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _trailing_comma(text: str, pos: int) -> int | None:
    """Offset of the comma when the parse error at `pos` is a trailing comma before } or ]."""
    if pos >= len(text) or text[pos] not in "}]":
        return None
    before = text[:pos].rstrip()
    return len(before) - 1 if before.endswith(",") else None


def check_size(p: Path) -> None:
    """Refuse a file far larger than any ds_config before reading it: parsing hundreds of MB of JSON takes tens of
    seconds and GBs of memory only to find it is not one."""
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise UserError(
            f"{p}: {size / 2**20:,.0f} MiB is too large for a ds_config (those are a few KB; the limit is "
            f"{MAX_FILE_BYTES // 2**20} MiB); check the path names the ds_config JSON file"
        )


def load_config_file(path: str | Path) -> tuple[dict, str]:
    """(config, text) of a ds_config file; UserError when it cannot be read or parsed."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a directory; give the path of a ds_config JSON file")
    if not p.is_file():
        raise UserError(f"{p} not found; give the path of a ds_config JSON file")
    try:
        check_size(p)
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: cannot read it ({e.strerror or e})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{p}: the file is UTF-16; save it as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(
            f"{p}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); a ds_config is "
            "a JSON text file: save it as UTF-8"
        ) from None
    return parse_config_text(text, str(p)), text
