"""Loading a model with transformers for a forward pass: device, dtype, bitsandbytes 4/8-bit, offload, remote code."""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moemerge.errors import ConfigError, MergeFailedError

log = logging.getLogger(__name__)
DEVICE = re.compile(r"cpu|cuda(:\d+)?|auto")


@dataclass(frozen=True)
class LoadOptions:
    """How a forward pass loads its model. `max_memory` maps a device (`cpu`, `0`, `cuda:1`) to bytes (auto only)."""

    device: str = "cpu"
    quantize: str | None = None  # "4bit" | "8bit"
    trust_remote_code: bool = False
    max_memory: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"--device: {self.device!r} is not one of cpu, cuda, cuda:N, auto")
        if self.quantize not in (None, "4bit", "8bit"):
            raise ConfigError(f"quantize: {self.quantize!r} is not 4bit or 8bit")
        if self.max_memory and self.device != "auto":
            raise ConfigError("--max-memory only applies with --device auto")


def _dtype(options: LoadOptions):
    """float32 on CPU (exact), bfloat16 on GPU (fast); `auto` counts as GPU only when one is visible."""
    import torch

    on_gpu = options.device.startswith("cuda") or (options.device == "auto" and torch.cuda.is_available())
    return torch.bfloat16 if on_gpu else torch.float32


def _quantization(options: LoadOptions):
    if options.quantize is None:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"--load-in-{options.quantize} needs bitsandbytes: pip install 'moemerge[quant]'") from None
    from transformers import BitsAndBytesConfig

    if options.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=_dtype(options), bnb_4bit_quant_type="nf4")


def check_device(options: LoadOptions) -> None:
    """--device names a GPU that is there (a dry run checks this too)."""
    if not options.device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--device {options.device}: no CUDA GPU is visible; use --device cpu")
    index = int(options.device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"--device {options.device}: only {torch.cuda.device_count()} GPU(s) are visible")


def _max_memory(options: LoadOptions) -> dict[Any, int] | None:
    if not options.max_memory:
        return None
    # accelerate wants GPU indices as ints; `cuda:1` and `1` both mean GPU 1
    return {(int(k.removeprefix("cuda:")) if k.removeprefix("cuda:").isdigit() else k): v
            for k, v in options.max_memory.items()}  # fmt: skip


@contextlib.contextmanager
def loaded_model(path: Path, options: LoadOptions, *, causal_lm: bool = False, saved_dtype: bool = False,
                 loading_info: bool = False, activations: int = 256 * 2**20, what: str = "the model") -> Iterator[Any]:  # fmt: skip
    """The model at `path` in eval mode; its offload folder is deleted when the block ends (drop the model, then
    call free_memory()). `saved_dtype`: keep the checkpoint's dtype; `loading_info`: yield (model, info) with
    transformers' missing/unexpected/mismatched keys. It is fitted to the room first (forward.fit): in memory, with
    its weights offloaded beyond a budget (one line says so), or refused before loading; `activations` is what the
    caller's forward passes hold at once."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from moemerge.forward.fit import plan_load

    check_device(options)
    options, line = plan_load(Path(path), options, activations=activations, what=what)
    if line:
        log.warning("%s", line)
    cls = AutoModelForCausalLM if causal_lm else AutoModel
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoModel skipping lm_head is expected, not worth a report
    hf_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "no optional CPU kernel" notices, not problems
    logging.getLogger("accelerate.big_modeling").setLevel(logging.ERROR)  # "offloaded to the disk": fit's line says it
    with tempfile.TemporaryDirectory(prefix="moemerge-offload-") as offload, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes' per-call cast notices
        try:
            loaded = cls.from_pretrained(
                str(path),
                dtype="auto" if saved_dtype else _dtype(options),
                output_loading_info=loading_info,
                device_map=options.device,
                max_memory=_max_memory(options),
                offload_folder=offload if options.device == "auto" else None,
                quantization_config=_quantization(options),
                trust_remote_code=options.trust_remote_code,
            )
        except ValueError as exc:
            if "trust_remote_code" in str(exc):
                raise ConfigError(f"{path}: the model needs its own code; rerun with --trust-remote-code") from None
            raise MergeFailedError(f"{path}: transformers cannot load the model ({str(exc).splitlines()[0]})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        model, info = loaded if loading_info else (loaded, None)
        model.eval()
        yield (model, info) if loading_info else model


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(path: Path, options: LoadOptions) -> Any:
    """The tokenizer saved in `path`, loaded with the --trust-remote-code value (never transformers' y/N prompt)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    fix = "copy the base model's tokenizer files into it, or merge again without --no-copy-tokenizer"
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"{path} has no tokenizer; {fix}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "a model of type deepseek" notices from the config lookup
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=options.trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ConfigError(f"{path}: the tokenizer needs its own code; rerun with --trust-remote-code") from None
        if "tokenizer" in str(exc).splitlines()[0]:
            raise ConfigError(f"{path} has no usable tokenizer ({str(exc).splitlines()[0]}); {fix}") from None
        raise
    finally:
        hf_logging.set_verbosity(verbosity)


def free_memory() -> None:
    """Return a dropped model's memory (CPU pages and the CUDA cache) before the weights are written."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    _trim_heap()


def _trim_heap() -> None:
    """Hand the freed heap back to the system (glibc keeps it otherwise): the next pass's room is measured from what
    the process holds, and a model just dropped must not count."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def input_device(model) -> Any:
    """Where input ids must go: the embedding's device (with device_map=auto, parameters are spread out)."""
    import torch

    embedding = model.get_input_embeddings()
    device = embedding.weight.device
    return torch.device("cpu") if device.type == "meta" else device
