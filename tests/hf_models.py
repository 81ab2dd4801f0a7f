"""Tiny Hugging Face model folders built in code (BERT-style, a WordPiece vocab written here).

Every folder is what `save_pretrained` writes: config.json, model.safetensors and the tokenizer
files; `sentence_transformers_folder` adds modules.json, 1_Pooling/config.json and
sentence_bert_config.json as sentence-transformers saves them. No download anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Real WordPiece vocabularies hold every character both alone and as a ##continuation.
CHARS = (list("abcdefghijklmnopqrstuvwxyz0123456789") + list("ßæøœıабвгдежзиклмнопрстуфхцчшщыьэюя")
         + list("αβγδεζηθικλμνξοπρστυφχψω") + list("はのてす"))
PUNCT = list(".,!?;:'\"()-@#$%&*+/<=>[]^_`{|}~")
CJK = list("東京日本首都我喜欢自然语言处理")
WORDS = ["the", "cat", "dog", "##ing", "##ed", "run", "hello", "world", "quick", "brown", "fox"]
VOCAB = SPECIALS + CHARS + ["##" + c for c in CHARS] + PUNCT + CJK + WORDS
SEQ_MAX = 64  # max_position_embeddings of the tiny models


def tiny_config(**kw: Any) -> Any:
    """A 2-layer, 32-wide BertConfig over VOCAB."""
    from transformers import BertConfig

    args: dict[str, Any] = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=SEQ_MAX)
    args.update(kw)
    return BertConfig(**args)


def save_tokenizer(folder: Path) -> Any:
    """Write vocab.txt and the BertTokenizer files into folder; return the tokenizer."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    tok.save_pretrained(str(folder))
    return tok


def bert_folder(folder: Path, kind: str = "model", seed: int = 0, **kw: Any) -> Path:
    """Save a tiny BertModel / BertForSequenceClassification / BertForTokenClassification with its tokenizer."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cls = {"model": transformers.BertModel, "seq": transformers.BertForSequenceClassification,
           "tok": transformers.BertForTokenClassification}[kind]
    cls(tiny_config(**kw)).eval().save_pretrained(str(folder))
    save_tokenizer(folder)
    return folder


def sentence_transformers_folder(folder: Path, pooling: str = "mean", normalize: bool = True,
                                 max_seq_length: int = 48) -> Path:
    """A sentence-transformers folder around a tiny BertModel (Transformer at the root)."""
    bert_folder(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                 "do_lower_case": False}))
    return folder
