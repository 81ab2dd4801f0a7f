"""`convert --with-tokenizer`: one ONNX file from a batch of strings to sentence embeddings (or
hidden states), checked here against the Python tokenizer + transformers model recomputed in
the test, on sentences of every length (empty, non-ASCII, past the maximum: truncation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxopt.conversion.api import convert_source
from onnxopt.conversion.sentences import sentences
from onnxopt.conversion.text import TEXT_INPUT
from onnxopt.core.errors import InvalidInputError
from onnxopt.core.runtime import create_session, needs_custom_ops

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.hf_models import bert_folder, sentence_transformers_folder  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

MAX_LEN = 48  # the sentence-transformers folder's max_seq_length (the model allows 64)
LONG = " ".join(["hello world the quick brown fox"] * 40)  # ~240 tokens: truncated to MAX_LEN
# Texts of every kind (ASCII, accents, Greek, Cyrillic, CJK, empty and blank strings, overlong
# text) whose characters are all in the tiny vocabulary once normalized.
ALIKE = ["", " ", "hello world", "The QUICK brown fox, running!", "Café crème, naïve façade; déjà vu.",
         "Привет мир", "Ёлка и йод", "ΚΑΛΗΜΈΡΑ", "東京は日本の首都です", "我喜欢自然语言处理",
         "numbers 3.14 and 2,718?", "tabs\tand\nnewlines", "Straße und Ærø", LONG, LONG + " tail", "a", "dog " * 5]


ROOT = Path(__file__).resolve().parents[1]


_FRESH_RUN: dict[str, subprocess.CompletedProcess[str]] = {}  # this module's run in a fresh process, once


@pytest.fixture(autouse=True)
def _fresh_process_when_tensorflow_is_loaded(request: pytest.FixtureRequest) -> Iterator[None]:
    """TensorFlow loaded earlier in the same process changes what onnxruntime-extensions' tokenizer
    op returns (72 of 300 sentences tokenized differently after the Keras tests ran; alone, 0):
    then the whole module runs once in a fresh interpreter, and every test must pass there."""
    if "tensorflow" not in sys.modules or os.environ.get("ONNXOPT_FRESH_PROCESS"):
        yield
        return
    if "run" not in _FRESH_RUN:
        _FRESH_RUN["run"] = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).relative_to(ROOT))],
            cwd=ROOT, env={**os.environ, "ONNXOPT_FRESH_PROCESS": "1"}, capture_output=True, text=True, timeout=900)
    r = _FRESH_RUN["run"]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    pytest.skip("passed in a fresh process: tensorflow is loaded in this one (see the fixture's docstring)")


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sentence_transformers_folder(tmp_path_factory.mktemp("hftok") / "st", max_seq_length=MAX_LEN)


def _python_pipeline(folder: Path, texts: list[str]) -> np.ndarray:
    """tokenizer (pad, truncate at MAX_LEN) -> BertModel -> mean pooling -> L2 norm, in the test."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    enc = tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state.numpy()
    m = enc["attention_mask"].numpy()[..., None].astype(np.float32)
    emb = (h * m).sum(1) / m.sum(1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_strings_in_embeddings_out(st_dir: Path, tmp_path: Path) -> None:
    texts = (ALIKE * 20)[:300]
    out = tmp_path / "st_text.onnx"
    r = convert_source(str(st_dir), exporter="torchscript", with_tokenizer=True, texts=texts, output=out)
    check = r.report["tokenizer"]
    assert check["sentences"] == 300 and check["ids_mismatched"] == 0 and check["passed"]
    assert check["min_cosine"] > 0.9999
    assert [i.name for i in r.model.graph.input] == [TEXT_INPUT]
    assert [o.name for o in r.model.graph.output] == ["sentence_embedding"]
    assert needs_custom_ops(r.model)
    sess = create_session(str(out))
    got = sess.run(None, {TEXT_INPUT: np.array(ALIKE, dtype=object)})[0]
    want = _python_pipeline(st_dir, ALIKE)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.999
    np.testing.assert_allclose(got, want, atol=1e-4)
    # The overlong texts are cut at MAX_LEN like the Python tokenizer cuts them: equal embeddings.
    assert np.allclose(got[ALIKE.index(LONG)], got[ALIKE.index(LONG + " tail")], atol=1e-6)
    # One string alone: the same embedding as within the batch (padding changes nothing).
    one = sess.run(None, {TEXT_INPUT: np.array(["hello world"], dtype=object)})[0]
    np.testing.assert_allclose(one[0], got[ALIKE.index("hello world")], atol=1e-5)


def test_differences_are_reported_not_hidden(st_dir: Path) -> None:
    # Normalized like transformers (NFD without marks, lower case): Greek tonos, kana dakuten,
    # dotted I, a lone combining mark. A word holding a character missing from the vocabulary
    # (the emoji) is where the two still differ: it must be reported.
    texts = ["ΚΑΛΗΜΈΡΑ Καλημέρα", "東京です", "İstanbul", "cafe\u0301", "hello🙂world", "hello world"]
    r = convert_source(str(st_dir), exporter="torchscript", with_tokenizer=True, texts=texts)
    check = r.report["tokenizer"]
    assert check["ids_mismatched"] == 1 and check["mismatched_examples"] == ["hello🙂world"]
    assert "[UNK]" in check["note"] and check["passed"]  # the model part itself still matches
    assert check["model_max_abs"] < 1e-4


def test_builtin_sentences_are_varied() -> None:
    s = sentences()
    assert len(s) == 300 and "" in s
    assert any(len(t.split()) > 600 for t in s)
    assert any(any(ord(c) > 0x3000 for c in t) for t in s)


def test_plain_encoder_gives_hidden_states_and_mask(tmp_path: Path) -> None:
    folder = bert_folder(tmp_path / "enc")
    r = convert_source(str(folder), exporter="torchscript", with_tokenizer=True, texts=ALIKE)
    assert [o.name for o in r.model.graph.output] == ["last_hidden_state", "attention_mask"]
    assert r.report["tokenizer"]["ids_mismatched"] == 0
    h, mask = create_session(r.model).run(None, {TEXT_INPUT: np.array(ALIKE[:4], dtype=object)})
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    enc = tok(ALIKE[:4], padding=True, truncation=True, max_length=64, return_tensors="np")
    np.testing.assert_array_equal(mask, enc["attention_mask"])
    assert h.shape == (*enc["input_ids"].shape, 32)


def test_cli_with_tokenizer(st_dir: Path, tmp_path: Path) -> None:
    from onnxopt.cli import cli

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(["hello world", "", "Café"]) + "\n", encoding="utf-8")
    out = tmp_path / "cli.onnx"
    r = CliRunner().invoke(cli, ["convert", str(st_dir), "-o", str(out), "--exporter", "torchscript",
                                 "--with-tokenizer", "--texts", str(texts), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["tokenizer"]["sentences"] == 3
    assert out.is_file()
    with pytest.raises(InvalidInputError, match="--with-tokenizer applies"):
        convert_source(str(tmp_path / "texts.txt"), with_tokenizer=True)
