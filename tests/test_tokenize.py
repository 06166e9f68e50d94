"""Prompt ids read from tokenizer.json equal AutoTokenizer's for the BOS + prompt rule (SPEC 6), for tokenizers built
with different settings; tokenizers that transformers builds differently are left to transformers."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from moemerge import tiny
from moemerge.forward import tokenize

PROMPTS = ["", "Hello world", "  two leading spaces", "numbers 12345 and 3.14", "café ñ 日本語 🙂", "<s> inside",
           "a</s>b", "line one\nline two", "Hello <|im_start|> there", "<|endoftext|>x", "UPPER lower", "tab\there"]  # fmt: skip


def trained(model, *, normalizer=None, pre_tokenizer=None, decoder=None, specials=(), **trainer_kwargs) -> Tokenizer:
    tok = Tokenizer(model)
    if normalizer:
        tok.normalizer = normalizer
    if pre_tokenizer:
        tok.pre_tokenizer = pre_tokenizer
    if decoder:
        tok.decoder = decoder
    trainer_cls = trainers.WordPieceTrainer if isinstance(model, models.WordPiece) else trainers.BpeTrainer
    trainer = trainer_cls(vocab_size=400, special_tokens=list(specials), show_progress=False, **trainer_kwargs)
    tok.train_from_iterator(tiny.CORPUS * 4, trainer)
    return tok


def save(folder, tok: Tokenizer, config: dict | None = None, **special):
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(str(folder))
    if config:
        file = folder / "tokenizer_config.json"
        file.write_text(json.dumps({**json.loads(file.read_text()), **config}))
    return folder


def byte_level_other_bos(folder):
    tok = trained(models.BPE(), pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=True),
                  decoder=decoders.ByteLevel(), specials=["<|endoftext|>", "<|im_start|>"],
                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    return save(folder, tok, bos_token="<|im_start|>", eos_token="<|endoftext|>")


def no_bos_wordpiece(folder):
    tok = trained(models.WordPiece(unk_token="[UNK]"), specials=["[UNK]", "[PAD]"],
                  normalizer=normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]),
                  pre_tokenizer=pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)]))  # fmt: skip
    return save(folder, tok, unk_token="[UNK]", pad_token="[PAD]")


def metaspace_byte_fallback(folder):
    tok = trained(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True), specials=["<unk>", "<s>", "</s>"],
                  normalizer=normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]))  # fmt: skip
    return save(folder, tok, {"tokenizer_class": "PreTrainedTokenizerFast"}, bos_token="<s>", eos_token="</s>")


def config_only_specials(folder):
    """BOS and an extra special token that only tokenizer_config.json names (tokenizer.json lacks them)."""
    tok = trained(models.BPE(), pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=False),
                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    save(folder, tok)
    config = {"bos_token": "<|begin|>", "extra_special_tokens": ["<|im_start|>"]}
    file = folder / "tokenizer_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **config}))
    return folder


def split_specials(folder):
    save(folder / "x", tiny.make_tokenizer(folder / "x").backend_tokenizer)
    return save(folder, Tokenizer.from_file(str(folder / "x" / "tokenizer.json")), {"split_special_tokens": True},
                bos_token="<s>", eos_token="</s>")  # fmt: skip


BUILDERS = {"tiny": lambda folder: tiny.make_tokenizer(folder) and folder, "byte_level_other_bos": byte_level_other_bos,
            "no_bos_wordpiece": no_bos_wordpiece, "metaspace_byte_fallback": metaspace_byte_fallback,
            "config_only_specials": config_only_specials, "split_special_tokens": split_specials}  # fmt: skip


def auto_ids(folder) -> tuple[str, list[list[int]]]:
    auto = AutoTokenizer.from_pretrained(str(folder))
    bos = auto.bos_token or ""
    return bos, [auto(bos + p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_ids_from_tokenizer_json_equal_auto_tokenizer(tmp_path, monkeypatch, kind):
    folder = BUILDERS[kind](tmp_path / kind)
    bos, expected = auto_ids(folder)
    monkeypatch.setattr(tokenize, "_from_transformers", lambda folder: pytest.fail("fell back to transformers"))
    prompt_tokenizer = tokenize.load(folder)
    assert prompt_tokenizer.bos == bos
    assert prompt_tokenizer.prompt_ids(PROMPTS) == expected
    if kind == "no_bos_wordpiece":
        assert bos == "" and expected[0] == []
    if kind in ("byte_level_other_bos", "config_only_specials"):
        assert bos in ("<|im_start|>", "<|begin|>") and len(expected[0]) == 1  # the BOS alone is one token


def test_model_specific_class_goes_through_transformers(tmp_path):
    """transformers v5 rebuilds a LlamaTokenizer's pipeline from the class, not from tokenizer.json: ids differ."""
    folder = metaspace_byte_fallback(tmp_path / "llama")
    generic = tokenize.load(folder).prompt_ids(PROMPTS)
    file = folder / "tokenizer_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), "tokenizer_class": "LlamaTokenizer"}))
    _, expected = auto_ids(folder)
    assert expected != generic  # why the fallback exists
    assert tokenize.load(folder).prompt_ids(PROMPTS) == expected


def test_without_tokenizer_json_goes_through_transformers(tmp_path):
    folder = byte_level_other_bos(tmp_path / "slow")
    auto = AutoTokenizer.from_pretrained(str(folder))
    (folder / "tokenizer.json").unlink()
    auto.backend_tokenizer.model.save(str(folder))  # vocab.json + merges.txt only
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GPT2Tokenizer"}))
    _, expected = auto_ids(folder)
    assert tokenize.load(folder).prompt_ids(PROMPTS) == expected
