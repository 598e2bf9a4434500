"""Instruction data (prompt/response and chat rows, loss masked on the prompt).

The tokenizer here is a word-level Hugging Face tokenizer built in the fixture (one token per word, a
ChatML-like template), so every test can say exactly which token carries loss."""

import json

import numpy as np
import pytest

from zerotrain import UserError
from zerotrain.data import IGNORE_INDEX, BatchSampler, MaskedTokens, TokenData, eval_batches, open_mask, prepare, window

from conftest import assert_clean_failure, zerotrain


def _words(text: str) -> list[str]:
    return text.split()


WORDS = _words("what is two plus two ? four . hello hi there friend how are you fine thanks be brief")
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
QA = {"prompt": "what is two plus two ?", "response": " four ."}
CHAT = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "how are you ?"},
        {"role": "assistant", "content": "fine thanks"},
    ]
}


def _word_tokenizer(path, chat_template):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "<eos>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + ["system", "user", "assistant", "tool"] + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<eos>",
        unk_token="[UNK]",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory):
    return _word_tokenizer(tmp_path_factory.mktemp("tok") / "chat", TEMPLATE)


@pytest.fixture(scope="module")
def plain_tok(tmp_path_factory):
    return _word_tokenizer(tmp_path_factory.mktemp("tok") / "plain", None)


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _tokens_and_mask(out):
    """Train + val as (token string, loss) pairs."""
    data = TokenData(out)
    tok = data.tokenizer().tok
    ids = np.concatenate([data.train.tokens, data.val.tokens])
    mask = np.concatenate([data.train.mask, data.val.mask])
    return list(zip(tok.convert_ids_to_tokens([int(i) for i in ids]), mask.tolist()))


def _loss_words(pairs):
    return [w for w, m in pairs if m]


# ------------------------------------------------------------------------------------------- prepare


def test_chat_rows_carry_loss_on_the_assistant_turns_only(tmp_path, chat_tok):
    src = _jsonl(tmp_path / "chat.jsonl", [CHAT, CHAT])
    meta = prepare(str(src), str(chat_tok), tmp_path / "d", val_fraction=0.5)
    pairs = _tokens_and_mask(tmp_path / "d")
    one = _words(
        "<|im_start|> system be brief <|im_end|> <|im_start|> user hello <|im_end|> <|im_start|> assistant hi there <|im_end|> "
        "<|im_start|> user how are you ? <|im_end|> <|im_start|> assistant fine thanks <|im_end|> <eos>"
    )
    assert [w for w, _ in pairs] == one + one
    # each assistant turn with its end-of-turn marker; the end-of-text separator after a chat example carries none
    assert _loss_words(pairs) == _words("hi there <|im_end|> fine thanks <|im_end|>") * 2
    assert meta["instruction"] and meta["chat_template"] and meta["documents"] == 2
    assert meta["train_tokens"] == meta["val_tokens"] == len(one)  # the split falls between examples
    assert meta["loss_tokens"] == {"train": 6, "val": 6}
    assert meta["loss_fraction"] == round(12 / (2 * len(one)), 4)
    assert open_mask(tmp_path / "d" / "train.mask").dtype == np.uint8


def test_prompt_response_without_template_is_prompt_response_eos(tmp_path, plain_tok):
    src = _jsonl(tmp_path / "qa.jsonl", [QA, {"prompt": "hello", "response": " hi friend"}, QA])
    meta = prepare(str(src), str(plain_tok), tmp_path / "d", val_fraction=0.3)
    pairs = _tokens_and_mask(tmp_path / "d")
    assert [w for w, _ in pairs] == _words(
        "what is two plus two ? four . <eos> hello hi friend <eos> what is two plus two ? four . <eos>"
    )
    # the end-of-text token is how the model learns to stop, so it carries loss here
    assert [m for _, m in pairs] == [0] * 6 + [1] * 3 + [0] + [1] * 3 + [0] * 6 + [1] * 3
    assert not meta["chat_template"] and meta["documents"] == 3


def test_prompt_response_with_a_template_is_rendered_as_one_user_and_one_assistant_turn(tmp_path, chat_tok):
    src = _jsonl(tmp_path / "qa.jsonl", [QA, QA])
    prepare(str(src), str(chat_tok), tmp_path / "d", val_fraction=0.5)
    pairs = _tokens_and_mask(tmp_path / "d")
    assert [w for w, _ in pairs[:15]] == _words(
        "<|im_start|> user what is two plus two ? <|im_end|> <|im_start|> assistant four . <|im_end|> <eos>"
    )
    assert _loss_words(pairs) == _words("four . <|im_end|>") * 2


def test_gpt2_tokenizer_prompt_response(tmp_path):
    from zerotrain.tokenizers import GPT2Tokenizer

    src = _jsonl(tmp_path / "qa.jsonl", [{"prompt": "Q: capital of France?\nA:", "response": " Paris"}] * 2)
    prepare(str(src), "gpt2", tmp_path / "d", val_fraction=0.5)
    data, tok = TokenData(tmp_path / "d"), GPT2Tokenizer()
    assert tok.decode(data.train.tokens[data.train.mask == 1].tolist()) == " Paris<|endoftext|>"
    assert tok.decode(data.train.tokens.tolist()) == "Q: capital of France?\nA: Paris<|endoftext|>"


def test_parquet_rows_read_with_datasets_match_jsonl(tmp_path, chat_tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [QA, QA, {"prompt": "hello", "response": " hi there"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa.parquet")
    _jsonl(tmp_path / "qa.jsonl", rows)
    prepare(str(tmp_path / "qa.parquet"), str(chat_tok), tmp_path / "p")
    prepare(str(tmp_path / "qa.jsonl"), str(chat_tok), tmp_path / "j")
    assert _tokens_and_mask(tmp_path / "p") == _tokens_and_mask(tmp_path / "j")
    assert TokenData(tmp_path / "p").meta["instruction"]
    pq.write_table(pa.Table.from_pylist([QA, {"prompt": "hello", "response": None}]), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match=r"bad.parquet: row 2: missing field \"response\""):
        prepare(str(tmp_path / "bad.parquet"), str(chat_tok), tmp_path / "b")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match="cannot read .*junk.parquet as parquet"):
        prepare(str(tmp_path / "junk.parquet"), str(chat_tok), tmp_path / "b")


def test_text_rows_stay_plain_continuation(tmp_path, plain_tok):
    src = _jsonl(tmp_path / "t.jsonl", [{"text": "hello there friend"}, {"text": "how are you ?"}])
    meta = prepare(str(src), str(plain_tok), tmp_path / "d", val_fraction=0.3)
    data = TokenData(tmp_path / "d")
    assert not meta["instruction"] and isinstance(data.train, np.memmap)
    assert not (tmp_path / "d" / "train.mask").exists()


def test_overwriting_instruction_data_with_text_removes_the_masks(tmp_path, plain_tok):
    prepare(str(_jsonl(tmp_path / "qa.jsonl", [QA, QA])), str(plain_tok), tmp_path / "d", val_fraction=0.5)
    assert (tmp_path / "d" / "val.mask").exists()
    prepare(
        str(_jsonl(tmp_path / "t.jsonl", [{"text": "hello there friend how are you"}])),
        str(plain_tok),
        tmp_path / "d",
        val_fraction=0.3,
        overwrite=True,
    )
    assert not (tmp_path / "d" / "val.mask").exists()


# ------------------------------------------------------------------------------------------- batches


def _masked_split(n=2_000, seed=0):
    """tokens 0..n-1 (so a row's first input is its window start) and a random loss mask."""
    return MaskedTokens(np.arange(n, dtype=np.uint16), (np.random.default_rng(seed).random(n) < 0.4).astype(np.uint8))


def _expected_targets(split, start, seq_len):
    ids = np.arange(start + 1, start + seq_len + 1)
    return np.where(split.mask[ids] == 1, ids, IGNORE_INDEX)


def test_sampler_masks_targets_exactly_where_the_loss_mask_is_zero():
    split = _masked_split()
    sampler = BatchSampler([split], [1.0], 16, 4, 0, 1, seed=5)
    for _ in range(40):
        x, y = sampler.next_batch()
        assert x.dtype == y.dtype == np.int64
        for row_x, row_y in zip(x, y):
            start = int(row_x[0])
            assert np.array_equal(row_x, np.arange(start, start + 16))  # inputs are never masked
            assert np.array_equal(row_y, _expected_targets(split, start, 16))


def test_window_across_an_example_boundary(tmp_path, plain_tok):
    """Packed examples: predicting the next example's first (prompt) token carries no loss, its response does."""
    prepare(str(_jsonl(tmp_path / "qa.jsonl", [QA, QA, QA])), str(plain_tok), tmp_path / "d", val_fraction=0.3)
    train = TokenData(tmp_path / "d").train  # two examples of 9 tokens: what is two plus two ? | four . <eos>
    x, y = window(train, 4, 12)  # targets are tokens 5..16: ? | four . <eos> | what is two plus two ? | four .
    assert x.tolist() == train.tokens[4:16].tolist()
    four, dot, eos = (int(t) for t in train.tokens[6:9])
    assert y.tolist() == [IGNORE_INDEX, four, dot, eos] + [IGNORE_INDEX] * 6 + [four, dot]


def test_masked_sampler_resumes_exactly_and_ignores_world_size():
    split = _masked_split(3_000, seed=1)
    a = BatchSampler([split], [1.0], 8, 4, 0, 1, seed=3)
    for _ in range(9):
        a.next_batch()
    b = BatchSampler([split], [1.0], 8, 4, 0, 1, seed=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    ranks = [BatchSampler([split], [1.0], 8, 2, r, 2, seed=3) for r in range(2)]
    for r in ranks:
        r.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for _ in range(120):  # past an epoch (3_000 / 9 windows = 333 = 83 batches)
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        joined = [r.next_batch() for r in ranks]
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
        assert np.array_equal(ya, np.concatenate([y for _, y in joined]))


def test_eval_batches_mask_targets():
    split = _masked_split(1_000, seed=2)
    for x, y in eval_batches(split, 16, 2, 3, 0, 1):
        for row_x, row_y in zip(x, y):
            assert np.array_equal(row_y, _expected_targets(split, int(row_x[0]), 16))


def test_mixing_plain_and_instruction_sources():
    plain, masked = np.arange(2_000, 4_000, dtype=np.uint16), _masked_split()
    sampler = BatchSampler([plain, masked], [1.0, 1.0], 8, 8, 0, 1, seed=0)
    x, y = sampler.next_batch()
    from_plain = x[:, 0] >= 2_000
    assert from_plain.any() and (~from_plain).any()
    assert (y[from_plain] != IGNORE_INDEX).all() and (y[~from_plain] == IGNORE_INDEX).any()


def test_ignore_index_is_the_models():
    from zerotrain.model import IGNORE_INDEX as MODEL_IGNORE_INDEX

    assert IGNORE_INDEX == MODEL_IGNORE_INDEX


def test_a_damaged_mask_says_how_to_regenerate(tmp_path, plain_tok):
    prepare(str(_jsonl(tmp_path / "qa.jsonl", [QA, QA])), str(plain_tok), tmp_path / "d", val_fraction=0.5)
    mask = tmp_path / "d" / "val.mask"
    raw = mask.read_bytes()
    mask.write_bytes(b"ZTTOKENS" + raw[8:])
    with pytest.raises(UserError, match="not a zerotrain loss mask.*zerotrain data prepare"):
        TokenData(tmp_path / "d")
    mask.write_bytes(raw[:-1])
    with pytest.raises(UserError, match="truncated"):
        TokenData(tmp_path / "d")
    mask.unlink()
    with pytest.raises(UserError, match="val.mask not found.*--overwrite"):
        TokenData(tmp_path / "d")


# ------------------------------------------------------------------------------------------- bad input

BAD_ROWS = {
    "missing response": ([QA, {"prompt": "hello"}], r"qa.jsonl:2: missing field \"response\""),
    "missing prompt": ([{"response": "hi"}], r"qa.jsonl:1: missing field \"prompt\""),
    "no known field": ([QA, QA, {"question": "hello"}], r"qa.jsonl:3: missing field \"prompt\" and \"response\""),
    "invalid json": ([QA, '{"prompt": "hello", ', QA], r"qa.jsonl:2: not valid JSON"),
    "empty prompt and response": (
        [QA, {"prompt": " ", "response": ""}],
        r"qa.jsonl:2: prompt and response are both empty",
    ),
    "empty response": ([{"prompt": "hello", "response": ""}], r"qa.jsonl:1: \"response\" is empty"),
    "unknown role": (
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hi"}]}],
        r"qa.jsonl:1: message 2 has unknown role 'bot'; use one of system, user, assistant, tool",
    ),
    "no content": ([{"messages": [{"role": "user"}]}], r"qa.jsonl:1: message 1 has no \"content\""),
    "no assistant": ([{"messages": [{"role": "user", "content": "hi"}]}], r"qa.jsonl:1: no assistant message"),
    "mixed kinds": ([QA, {"text": "hello"}], r"qa.jsonl:2: this row is text data but .*qa.jsonl:1 is instruction data"),
    "not a string": ([{"prompt": 3, "response": "x"}], r"qa.jsonl:1: \"prompt\" must be a string"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_rows_name_the_line_and_overwrite_nothing(tmp_path, chat_tok, case):
    rows, message = BAD_ROWS[case]
    prepare(str(_jsonl(tmp_path / "good.jsonl", [QA, QA])), str(chat_tok), tmp_path / "d", val_fraction=0.5)
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir() if p.is_file()}
    with pytest.raises(UserError, match=message):
        prepare(str(_jsonl(tmp_path / "qa.jsonl", rows)), str(chat_tok), tmp_path / "d", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir() if p.is_file()} == before


def test_chat_rows_need_a_chat_template(tmp_path, plain_tok):
    src = _jsonl(tmp_path / "chat.jsonl", [CHAT, CHAT])
    with pytest.raises(
        UserError,
        match=r"chat.jsonl:1 holds chat messages but the tokenizer .* has no chat template; .*prompt/response rows",
    ):
        prepare(str(src), str(plain_tok), tmp_path / "d")
    with pytest.raises(UserError, match="no chat template"):
        prepare(str(src), "gpt2", tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_char_tokenizer_is_refused_for_instruction_data(tmp_path):
    with pytest.raises(UserError, match="end-of-text token.*--tokenizer gpt2"):
        prepare(str(_jsonl(tmp_path / "qa.jsonl", [QA, QA])), "char", tmp_path / "d")


def test_a_template_that_rewrites_earlier_turns_is_refused(tmp_path):
    # drops everything but the last two messages, like templates that strip past reasoning
    rewriting = (
        "{% for m in messages[-2:] %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
    )
    tok = _word_tokenizer(tmp_path / "tok", rewriting)
    with pytest.raises(UserError, match="renders earlier turns differently.*message 3"):
        prepare(str(_jsonl(tmp_path / "chat.jsonl", [CHAT])), str(tok), tmp_path / "d")


def test_template_errors_become_a_line(tmp_path):
    strict = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('conversations start with the user') }}{% endif %}"
        + TEMPLATE
    )
    tok = _word_tokenizer(tmp_path / "tok", strict)
    with pytest.raises(
        UserError, match=r"chat.jsonl:1: the tokenizer's chat template refused this conversation \(conversations start"
    ):
        prepare(str(_jsonl(tmp_path / "chat.jsonl", [CHAT])), str(tok), tmp_path / "d")


def test_cli_prints_the_loss_fraction_and_fails_cleanly(tmp_path, chat_tok):
    src = _jsonl(tmp_path / "chat.jsonl", [CHAT, CHAT, CHAT])
    r = zerotrain("data", "prepare", "--source", src, "--tokenizer", chat_tok, "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    assert "3 instruction examples" in r.stdout and "loss on 22.2% of tokens" in r.stdout
    bad = _jsonl(tmp_path / "bad.jsonl", [CHAT, {"prompt": "hello"}])
    assert_clean_failure(
        zerotrain("data", "prepare", "--source", bad, "--tokenizer", chat_tok, "--out", tmp_path / "e"),
        "bad.jsonl:2",
        'missing field "response"',
    )
