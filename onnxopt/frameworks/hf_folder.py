"""Read a Hugging Face model folder without importing transformers: its config, the architecture
family it belongs to, its weights, and the sentence-transformers modules around it.

A folder as written by `save_pretrained` holds `config.json` (`architectures`, `model_type`) and
weights (`model.safetensors`, `pytorch_model.bin` or their sharded `*.index.json`). A
sentence-transformers folder adds `modules.json` listing a Transformer module (the HF model,
at the root or in `0_Transformer/`), a Pooling module (`1_Pooling/config.json`) and optionally
Normalize; the sentence embedding is pooling(last_hidden_state, attention_mask), then L2-normed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxopt.core.errors import InvalidInputError, UnsupportedModelError

# Task families onnxopt converts, and the architecture-name suffixes that select them.
TASKS = ("feature-extraction", "sequence-classification", "token-classification",
         "image-classification", "question-answering")
_SUFFIXES = (
    ("ForSequenceClassification", "sequence-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "feature-extraction"),  # the encoder under the LM head: its hidden states
    ("ForPreTraining", "feature-extraction"),
    ("Model", "feature-extraction"),
)
_GENERATIVE = ("LMHeadModel", "ForCausalLM", "ForConditionalGeneration", "ForSeq2SeqLM")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# sentence-transformers pooling modes, in the order it concatenates them.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")
_ST_POOLING_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
                    "mean": "pooling_mode_mean_tokens", "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}
_ST_UNSUPPORTED_KEYS = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


@dataclass(frozen=True)
class HFFolder:
    """What a model folder declares: where the HF model is, its task, pooling and limits."""

    root: Path  # the folder given
    model_dir: Path  # where config.json and the weights are (root, or 0_Transformer/)
    config: dict[str, Any]
    architecture: str  # e.g. BertModel ("" when config.json names none)
    task: str  # one of TASKS
    pooling: tuple[str, ...] = ()  # sentence-transformers pooling modes (empty: none)
    normalize: bool = False  # sentence-transformers Normalize module present
    max_seq_length: int | None = None  # sentence-transformers truncation length

    @property
    def model_type(self) -> str:
        """config.json's model_type ('' when missing)."""
        return str(self.config.get("model_type", ""))

    @property
    def sentence_transformers(self) -> bool:
        """True for a sentence-transformers folder (modules.json)."""
        return (self.root / "modules.json").is_file()


def is_hf_folder(path: Path) -> bool:
    """True when path is a folder holding config.json or a sentence-transformers modules.json."""
    return path.is_dir() and ((path / "config.json").is_file() or (path / "modules.json").is_file())


def read_folder(path: str | Path, task: str = "auto") -> HFFolder:
    """The HFFolder of a model folder; InvalidInputError (one line) when it cannot be converted."""
    root = Path(path)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: not a folder")
    model_dir, normalize, max_len = root, False, None
    pooling: tuple[str, ...] = ()
    if (root / "modules.json").is_file():
        model_dir, pooling, normalize, max_len = _sentence_transformers(root)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise InvalidInputError(
            f"{model_dir}: no config.json; a Hugging Face model folder is written by model.save_pretrained(folder)"
        )
    config = _json(cfg_path)
    if not isinstance(config, dict):
        raise InvalidInputError(f"{cfg_path}: expected a JSON object")
    archs = config.get("architectures") or []
    arch = str(archs[0]) if isinstance(archs, list) and archs else ""
    if task == "auto":
        task = task_of(arch, config, cfg_path)
    elif task not in TASKS:
        raise InvalidInputError(f"--task {task!r}: choose one of auto, {', '.join(TASKS)}")
    if pooling and task != "feature-extraction":
        raise InvalidInputError(f"{root}: sentence-transformers pooling needs the encoder's hidden states; "
                                f"got --task {task}")
    if not any((model_dir / w).is_file() for w in WEIGHT_FILES):
        raise InvalidInputError(
            f"{model_dir}: no weights ({' or '.join(WEIGHT_FILES[::2])}); save the model with "
            "model.save_pretrained(folder) (safe_serialization) next to config.json"
        )
    return HFFolder(root=root, model_dir=model_dir, config=config, architecture=arch, task=task,
                    pooling=pooling, normalize=normalize, max_seq_length=max_len)


def task_of(arch: str, config: dict[str, Any], where: Path | str = "config.json") -> str:
    """The task family of an architecture name (BertForSequenceClassification -> sequence-classification)."""
    if config.get("is_encoder_decoder"):
        raise UnsupportedModelError(
            f"{where}: {arch or config.get('model_type', 'the model')} is an encoder-decoder (generative) model; "
            f"onnxopt convert handles {', '.join(TASKS)} models"
        )
    if not arch:
        if not config.get("model_type"):
            raise InvalidInputError(f"{where}: names neither architectures nor model_type; is it a transformers config?")
        return "feature-extraction"  # the base model of that type
    if arch.endswith(_GENERATIVE):
        raise UnsupportedModelError(
            f"{where}: {arch} is a generative (decoder) model; onnxopt convert handles {', '.join(TASKS)} models"
        )
    for suffix, task in _SUFFIXES:
        if arch.endswith(suffix):
            return task
    raise UnsupportedModelError(
        f"{where}: unknown architecture {arch}; onnxopt convert handles *Model, *ForSequenceClassification, "
        "*ForTokenClassification, *ForImageClassification, *ForQuestionAnswering (or pass --task)"
    )


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"{path}: not readable JSON ({e})") from e


def _sentence_transformers(root: Path) -> tuple[Path, tuple[str, ...], bool, int | None]:
    """(model dir, pooling modes, normalize, max_seq_length) from modules.json and its modules."""
    modules = _json(root / "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise InvalidInputError(f"{root / 'modules.json'}: expected a list of modules")
    model_dir: Path | None = None
    pooling: tuple[str, ...] = ()
    normalize = False
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        sub = root / str(m.get("path", ""))
        if kind == "Transformer":
            model_dir = sub
        elif kind == "Pooling":
            pooling = _pooling(sub / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise UnsupportedModelError(
                f"{root / 'modules.json'}: sentence-transformers module {kind or '?'} is not supported "
                "(Transformer, Pooling and Normalize are)"
            )
    if model_dir is None:
        raise InvalidInputError(f"{root / 'modules.json'}: no sentence_transformers.models.Transformer module")
    max_len = None
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.is_file():
        value = _json(st_cfg).get("max_seq_length")
        max_len = int(value) if isinstance(value, int) and value > 0 else None
    return model_dir, pooling, normalize, max_len


def _pooling(path: Path) -> tuple[str, ...]:
    """The pooling modes switched on in a sentence-transformers Pooling config."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: missing (the sentence-transformers Pooling module's config)")
    cfg = _json(path)
    bad = [k for k in _ST_UNSUPPORTED_KEYS if cfg.get(k)]
    if bad:
        raise UnsupportedModelError(f"{path}: {bad[0]} is not supported (cls, max, mean, mean_sqrt_len are)")
    modes = tuple(mode for mode in POOLING_MODES if cfg.get(_ST_POOLING_KEYS[mode]))
    if not modes:
        raise InvalidInputError(f"{path}: no pooling mode is switched on")
    return modes
