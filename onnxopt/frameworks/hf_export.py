"""Hugging Face side of `convert`: build a model folder with transformers (offline, eager
attention, float32) and wrap it as a torch Source with transformers' input and output names.

Text models take input_ids, attention_mask (and token_type_ids when the model has more than one
token type), all int64 [batch, sequence], and give last_hidden_state [batch, sequence, hidden],
logits, or start_logits/end_logits; image models take pixel_values [batch, C, H, W]. The batch
and sequence axes are dynamic, and parity is checked at sequence lengths 8, 128 and
min(512, the model's maximum) with padded rows (a sentence-transformers max_seq_length only
sets where --with-tokenizer cuts text). Sentence-transformers folders give
sentence_embedding = pool(last_hidden_state, attention_mask), L2-normed when the folder says so:

    mean:          sum_t h_t m_t / max(sum_t m_t, 1e-9)
    mean_sqrt_len: sum_t h_t m_t / sqrt(max(sum_t m_t, 1e-9))
    max:           max_t (h_t if m_t else -1e9)
    cls:           h_0
    normalize:     x / max(||x||_2, 1e-12)
"""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.core.errors import InvalidInputError, MissingExtraError, UnsupportedModelError
from onnxopt.frameworks import require_torch
from onnxopt.frameworks.hf_folder import POOLING_MODES, HFFolder, read_folder
from onnxopt.frameworks.quiet import quiet_exporter, shorten_error
from onnxopt.frameworks.torch_export import TorchSource

log = logging.getLogger(__name__)

_AUTO_CLASSES = {
    "feature-extraction": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
    "question-answering": "AutoModelForQuestionAnswering",
}
_NOISY = ("transformers", "safetensors", "huggingface_hub")
PARITY_LENGTHS = (8, 128, 512)  # sequence lengths parity is checked at (capped by the model's maximum)
BENCH_LENGTH = 128  # sequence length the exporters are timed at
EXAMPLE_LENGTH = 16
PARITY_BATCH = 3


def require_transformers() -> Any:
    """Import transformers or raise MissingExtraError naming the extra."""
    try:
        import transformers
    except ImportError as e:
        raise MissingExtraError("transformers", "hf") from e
    return transformers


def load_hf_source(
    path: str | Path, *, task: str = "auto", pooling: str = "auto", normalize: bool | None = None
) -> HFSource:
    """An HFSource for a model folder; pooling/normalize override a sentence-transformers folder's."""
    folder = read_folder(path, task)
    modes = folder.pooling if pooling == "auto" else (() if pooling == "none" else (pooling,))
    if pooling not in ("auto", "none", *POOLING_MODES):
        raise InvalidInputError(f"--pooling {pooling!r}: choose one of auto, none, {', '.join(POOLING_MODES)}")
    if modes and folder.task != "feature-extraction":
        raise InvalidInputError(f"--pooling {pooling}: pools hidden states; {folder.architecture} gives {folder.task}")
    norm = folder.normalize if normalize is None else normalize
    if norm and not modes:
        raise InvalidInputError("--normalize needs a pooled embedding: add --pooling mean (or cls, max)")
    return HFSource(folder, modes, norm)


def build_model(folder: HFFolder) -> Any:
    """The transformers model of the folder, float32, eager attention, eval mode, offline."""
    transformers = require_transformers()
    torch = require_torch()
    cls = getattr(transformers, _AUTO_CLASSES[folder.task])
    try:
        with quiet_exporter(_NOISY):
            model, info = cls.from_pretrained(
                str(folder.model_dir), attn_implementation="eager", local_files_only=True,
                dtype=torch.float32, output_loading_info=True,
            )
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, ImportError) as e:
        what = folder.architecture or folder.model_type or "the model"
        raise UnsupportedModelError(
            f"{folder.model_dir}: transformers cannot build {what}: {shorten_error(e, (), limit=200)}"
        ) from e
    missing = [k for k in info.get("missing_keys", []) if ".pooler." not in f".{k}"]
    if missing or info.get("mismatched_keys"):
        bad = (missing or [str(k) for k in info["mismatched_keys"]])[:3]
        raise InvalidInputError(
            f"{folder.model_dir}: the weights do not fit {cls.__name__} for {folder.architecture or folder.model_type} "
            f"(missing or mismatched: {', '.join(bad)}); check --task or the folder's weights"
        )
    return model.eval()


def max_length(config: Any) -> int:
    """The longest sequence the model's position table allows (RoBERTa-style tables start past padding)."""
    n = int(getattr(config, "max_position_embeddings", 0) or 512)
    if "roberta" in str(getattr(config, "model_type", "")) or getattr(config, "model_type", "") == "camembert":
        n -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    return max(n, 1)


@functools.lru_cache(maxsize=1)
def _wrappers() -> tuple[type, type]:
    """The torch modules (defined once torch is imported) that give a model positional inputs."""
    torch = require_torch()
    f = torch.nn.functional

    class TextModel(torch.nn.Module):  # type: ignore[misc,name-defined]
        """input_ids, attention_mask[, token_type_ids] -> the task's outputs (pooled when asked)."""

        def __init__(self, model: Any, task: str, pooling: tuple[str, ...], normalize: bool) -> None:
            super().__init__()
            self.model, self.task, self.pooling, self.normalize = model, task, pooling, normalize

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            out = self.model(**kw)
            if self.task == "question-answering":
                return out.start_logits, out.end_logits
            if self.task != "feature-extraction":
                return out.logits
            h = out.last_hidden_state
            if not self.pooling:
                return h
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            count = m.sum(1).clamp(min=1e-9)
            parts = []
            for mode in self.pooling:
                if mode == "cls":
                    parts.append(h[:, 0])
                elif mode == "max":
                    parts.append(h.masked_fill(m == 0, -1e9).max(1).values)
                elif mode == "mean":
                    parts.append((h * m).sum(1) / count)
                else:  # mean_sqrt_len
                    parts.append((h * m).sum(1) / torch.sqrt(count))
            emb = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            return f.normalize(emb, p=2.0, dim=1) if self.normalize else emb

    class ImageModel(torch.nn.Module):  # type: ignore[misc,name-defined]
        """pixel_values -> logits (classification) or last_hidden_state."""

        def __init__(self, model: Any, task: str) -> None:
            super().__init__()
            self.model, self.task = model, task

        def forward(self, pixel_values: Any) -> Any:
            out = self.model(pixel_values=pixel_values)
            return out.logits if self.task == "image-classification" else out.last_hidden_state

    return TextModel, ImageModel


class HFSource(TorchSource):
    """A transformers model folder as a convert Source (exported through torch.onnx)."""

    def __init__(self, folder: HFFolder, pooling: tuple[str, ...] = (), normalize: bool = False) -> None:
        self.folder, self.pooling, self.normalize = folder, pooling, normalize
        model = build_model(folder)
        self.config = model.config
        self.main_input = str(getattr(model, "main_input_name", "input_ids"))
        text_cls, image_cls = _wrappers()
        self.max_positions = max_length(self.config)  # what the model can take (parity goes there)
        self.max_len = min(self.max_positions, folder.max_seq_length or self.max_positions)  # where text is cut
        rng = np.random.default_rng(0)
        if self.main_input == "input_ids":
            params = inspect.signature(model.forward).parameters
            self.token_types = "token_type_ids" in params and int(getattr(self.config, "type_vocab_size", 0) or 0) > 1
            names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.token_types else [])
            wrapper = text_cls(model, folder.task, pooling, normalize)
            examples = self._text_inputs(rng, 2, min(EXAMPLE_LENGTH, self.max_positions))
        elif self.main_input == "pixel_values":
            self.token_types = False
            names = ["pixel_values"]
            wrapper = image_cls(model, folder.task)
            examples = [rng.standard_normal((2, *self._image_shape())).astype(np.float32)]
        else:
            raise UnsupportedModelError(
                f"{folder.model_dir}: {folder.architecture} takes {self.main_input}; onnxopt convert handles "
                "text (input_ids) and image (pixel_values) models"
            )
        super().__init__(wrapper, examples, names)
        self.framework = "transformers"
        self.framework_version = f"{require_transformers().__version__} (torch {self.framework_version})"

    # ------------------------------------------------------------ Source hooks used by convert

    def output_names(self) -> list[str]:
        """transformers' names for the task's outputs."""
        if self.pooling:
            return ["sentence_embedding"]
        if self.folder.task == "question-answering":
            return ["start_logits", "end_logits"]
        return ["last_hidden_state"] if self.folder.task == "feature-extraction" else ["logits"]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The sequence axis of text inputs and of per-token outputs (the batch axis is convert's)."""
        if self.main_input != "input_ids":
            return {}
        axes: dict[str, dict[int, str]] = {n: {1: "sequence"} for n in self.names}
        per_token = self.folder.task in ("token-classification", "question-answering") or (
            self.folder.task == "feature-extraction" and not self.pooling)
        if per_token:
            axes.update({n: {1: "sequence"} for n in self.output_names()})
        return axes

    def parity_inputs(self, seed: int) -> list[list[np.ndarray]]:
        """Padded text batches at sequence lengths 8, 128 and min(512, max), or seeded images."""
        rng = np.random.default_rng(seed)
        if self.main_input != "input_ids":
            return [[rng.standard_normal((PARITY_BATCH, *self._image_shape())).astype(np.float32)]]
        lengths = sorted({min(n, self.max_positions) for n in PARITY_LENGTHS})
        return [self._text_inputs(rng, PARITY_BATCH, n) for n in lengths]

    def benchmark_inputs(self) -> list[np.ndarray]:
        """Batch 1 at sequence min(128, max) (text) or one image: what the exporters are timed on."""
        rng = np.random.default_rng(0)
        if self.main_input != "input_ids":
            return [rng.standard_normal((1, *self._image_shape())).astype(np.float32)]
        return self._text_inputs(rng, 1, min(BENCH_LENGTH, self.max_positions))

    def describe(self) -> dict[str, Any]:
        """What was built: architecture, task, inputs, pooling, the longest sequence."""
        return {
            "kind": "sentence-transformers" if self.folder.sentence_transformers else "transformers",
            "architecture": self.folder.architecture, "model_type": self.folder.model_type,
            "task": self.folder.task, "inputs": list(self.names), "outputs": self.output_names(),
            "pooling": list(self.pooling), "normalize": self.normalize,
            "max_length": self.max_len if self.main_input == "input_ids" else None,  # text is cut there
            "max_positions": self.max_positions if self.main_input == "input_ids" else None,
        }

    # ------------------------------------------------------------ inputs

    def _text_inputs(self, rng: np.random.Generator, batch: int, length: int) -> list[np.ndarray]:
        """Random ids with [CLS]-like first token, rows padded to lengths n, n/2, 1, ..."""
        vocab = int(getattr(self.config, "vocab_size", 100) or 100)
        ids = rng.integers(min(5, vocab - 1), vocab, (batch, length)).astype(np.int64)
        mask = np.zeros((batch, length), dtype=np.int64)
        for r in range(batch):
            mask[r, : max(1, length >> r)] = 1
        pad = int(getattr(self.config, "pad_token_id", 0) or 0)
        ids = np.where(mask == 1, ids, pad).astype(np.int64)
        arrays = [ids, mask]
        if self.token_types:
            tt = np.zeros((batch, length), dtype=np.int64)
            tt[0, length // 2:] = 1
            arrays.append(tt * mask)
        return arrays

    def _image_shape(self) -> tuple[int, int, int]:
        size = getattr(self.config, "image_size", 224)
        if isinstance(size, dict):
            size = size.get("height", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        return int(getattr(self.config, "num_channels", 3) or 3), int(h), int(w)

