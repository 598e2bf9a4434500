import pytest

from zerotrain import UserError
from zerotrain.tokenizers import CharTokenizer, GPT2Tokenizer, HFTokenizer, load_tokenizer

SAMPLE = "Hello world! It's 2026 — naïve café,\n\n  tabs\tand   spaces. <|endoftext|> stays text."


def test_gpt2_ids_equal_openai_reference():
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world").tolist() == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE


def test_gpt2_saved_as_huggingface_files_tokenizes_identically(tmp_path):
    GPT2Tokenizer().save(tmp_path)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    plain = SAMPLE.replace(
        "<|endoftext|>", ""
    )  # HF reads that string as the special token, tiktoken's encode_ordinary as text
    assert hf(plain, add_special_tokens=False)["input_ids"] == GPT2Tokenizer().encode(plain).tolist()
    assert hf.eos_token_id == 50256
    assert isinstance(load_tokenizer(tmp_path), GPT2Tokenizer)


def test_char_round_trip_and_unknown_characters(tmp_path):
    tok = CharTokenizer.from_text("to be or not to be\n")
    assert tok.chars == sorted(set("to be or not to be\n"))
    assert tok.decode(tok.encode("not to be")) == "not to be"
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer) and again.chars == tok.chars
    with pytest.raises(UserError, match="not in this char vocabulary"):
        tok.encode("xyz")


def test_hf_tokenizer_directory(tmp_path):
    GPT2Tokenizer().save(tmp_path)
    tok = HFTokenizer(tmp_path)
    assert tok.encode("Hello world").tolist() == [15496, 995]
    with pytest.raises(UserError, match="directory"):
        HFTokenizer(tmp_path / "missing")
