"""GPT-2's real weights, loaded into the course's own :class:`~lal.model.GPT`.

OpenAI's GPT-2 is the model ``lal``'s GPT is shaped after: learned positions, pre-LayerNorm blocks,
tanh-approximated GELU, biases everywhere, LayerNorm ε = 1e-5 and a head tied to the token
embedding. So its published weights fit the class the chapters build, tensor for tensor, and a
learner can put their own small model next to the real one and run both through the same code.

Two ways in, both through :func:`load_gpt2`:

* **by name** (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``): Hugging Face's
  ``config.json`` and ``model.safetensors`` are downloaded once into the cache
  (``~/.cache/lal/gpt2/NAME``, or ``LAL_CACHE_DIR``), checked, and read from there afterwards;
* **by folder**: any folder holding those two files in Hugging Face's GPT-2 format (downloaded by
  hand, copied from another machine, or written by ``transformers``' ``save_pretrained``) loads
  offline.

The weights are read with ``safetensors``: a plain, memory-safe tensor format (unlike a pickle,
reading it cannot run code). One detail needs care: GPT-2 was written with a ``Conv1D`` layer
that stores its weight as ``(in_features, out_features)``, the transpose of ``nn.Linear``'s
``(out_features, in_features)``, so those four matrices per block are transposed on the way in.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import torch

from lal.data import DEFAULT_TIMEOUT_S, DownloadError, _stream_to_file, cache_dir
from lal.model import GPT, GPTConfig
from lal.tokenizers import TiktokenTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: The files a folder in Hugging Face's GPT-2 format must hold, and the order they are fetched in.
GPT2_FILES = (CONFIG_FILE, WEIGHTS_FILE)
#: Written last into a downloaded folder: the SHA-256 and size of each file, once they were verified.
VERIFIED_FILE = "verified.json"

HF_BASE_URL = "https://huggingface.co"

#: GPT-2's vocabulary: 50,000 merges, 256 bytes and ``<|endoftext|>``, exactly tiktoken's ``r50k_base``.
GPT2_VOCAB_SIZE = 50257

#: GPT-2's Conv1D layers: their weights are stored (in, out) and become nn.Linear's (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
#: Buffers some GPT-2 files carry (the causal mask as a tensor); lal builds its mask on the fly.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

#: Hugging Face's names for the tanh approximation of GELU that GPT-2 uses (lal's MLP uses it too).
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh")
#: lal's LayerNorm ε (PyTorch's default), which is GPT-2's.
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class GPT2Release:
    """One of OpenAI's four GPT-2 sizes on the Hugging Face Hub.

    ``sha256`` pins a file's content. Where a checksum is not pinned here, the download is checked
    against the SHA-256 that Hugging Face states for the file (its ``X-Linked-Etag`` header).
    """

    name: str
    repo: str
    revision: str = "main"
    parameters: str = ""
    sha256: Mapping[str, str] = field(default_factory=dict)

    def url(self, filename: str, base_url: str = HF_BASE_URL) -> str:
        return f"{base_url.rstrip('/')}/{self.repo}/resolve/{self.revision}/{filename}"


GPT2_RELEASES: dict[str, GPT2Release] = {
    "gpt2": GPT2Release(
        "gpt2", "openai-community/gpt2", revision="607a30d783dfa663caf39e06633721c8d4cfcd7e", parameters="124M",
        sha256={
            CONFIG_FILE: "0daed7749b4f02b8f76240d5444551d7b08712dab4d0adb8239c56ba823bb7b4",
            WEIGHTS_FILE: "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707",
        },
    ),
    "gpt2-medium": GPT2Release("gpt2-medium", "openai-community/gpt2-medium", parameters="355M"),
    "gpt2-large": GPT2Release("gpt2-large", "openai-community/gpt2-large", parameters="774M"),
    "gpt2-xl": GPT2Release("gpt2-xl", "openai-community/gpt2-xl", parameters="1.5B"),
}


# --------------------------------------------------------------------------- the public entry point


def load_gpt2(name_or_dir: str | os.PathLike, device: str | torch.device = "cpu",
              **download_options: Any) -> tuple[GPT, TiktokenTokenizer]:
    """GPT-2 as a lal :class:`GPT` in eval mode on ``device``, and GPT-2's tokenizer.

    ``name_or_dir`` is one of :data:`GPT2_RELEASES` (downloaded once, then read from the cache) or
    a folder holding ``config.json`` and ``model.safetensors`` in Hugging Face's GPT-2 format
    (read offline). ``download_options`` go to :func:`download_gpt2` (``base_url``, ``timeout_s``).
    """
    if str(name_or_dir) in GPT2_RELEASES:
        folder = download_gpt2(str(name_or_dir), **download_options)
    else:
        folder = Path(name_or_dir).expanduser()
    model = load_gpt2_folder(folder)
    if model.config.vocab_size != GPT2_VOCAB_SIZE:
        raise ValueError(
            f"{folder} holds a model with {model.config.vocab_size:,} tokens, not GPT-2's {GPT2_VOCAB_SIZE:,}: "
            "GPT-2's tokenizer cannot drive it. lal.pretrained.load_gpt2_folder loads it without a tokenizer."
        )
    return model.to(device), gpt2_tokenizer()


def gpt2_tokenizer() -> TiktokenTokenizer:
    """GPT-2's own tokenizer (tiktoken's ``r50k_base``) with no added tokens: ids 0 … 50256."""
    return TiktokenTokenizer("r50k_base", special_tokens=())


# --------------------------------------------------------------------------- reading a folder


def load_gpt2_folder(folder: str | os.PathLike) -> GPT:
    """Build a lal :class:`GPT` from ``config.json`` + ``model.safetensors`` in ``folder`` (no network)."""
    folder = Path(folder)
    for filename in GPT2_FILES:
        _require_file(folder, filename)
    config = gpt2_config(_read_json(folder / CONFIG_FILE), source=folder / CONFIG_FILE)
    state_dict = convert_gpt2_state_dict(_read_safetensors(folder / WEIGHTS_FILE), config)
    with torch.device("meta"):  # no time or memory spent on random weights that are replaced at once
        model = GPT(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assigning replaced both; tie them again
    return model.eval()


def _require_file(folder: Path, filename: str) -> None:
    names = ", ".join(GPT2_RELEASES)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"There is no folder {folder}. Give a GPT-2 name ({names}) or a folder holding "
            f"{' and '.join(GPT2_FILES)} in Hugging Face's GPT-2 format."
        )
    if not (folder / filename).is_file():
        raise FileNotFoundError(
            f"{folder} has no {filename}: a GPT-2 folder needs both {' and '.join(GPT2_FILES)} (get them from "
            f"{HF_BASE_URL}/{GPT2_RELEASES['gpt2'].repo}/tree/main, or call load_gpt2('gpt2') online once)."
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON file ({type(err).__name__}): download it again.") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds {type(values).__name__}, not a model config: download it again.")
    return values


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({str(err).splitlines()[0]}); it may be cut short. "
            "Download it again."
        ) from None


def gpt2_config(hf_config: Mapping[str, Any], source: str | os.PathLike = "the config") -> GPTConfig:
    """The lal :class:`GPTConfig` of a Hugging Face GPT-2 ``config.json``.

    Everything GPT-2 could be configured to do differently from lal's model (another activation,
    another LayerNorm ε, an untied head, unscaled or layer-scaled attention, a non-4× MLP) is
    refused with a message, so a model that loads is a model that computes what GPT-2 computes.
    """
    def refuse(what: str) -> ValueError:
        return ValueError(f"{source} is not a GPT-2 config that lal's GPT can run: {what}.")

    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise refuse(f"its model_type is {model_type!r}, not 'gpt2'")
    checks = {
        "activation_function": (hf_config.get("activation_function", "gelu_new") in TANH_GELU_NAMES,
                                "lal's MLP uses GPT-2's tanh GELU ('gelu_new')"),
        "layer_norm_epsilon": (math.isclose(float(hf_config.get("layer_norm_epsilon", LAYER_NORM_EPS)),
                                            LAYER_NORM_EPS), f"lal's LayerNorm uses ε = {LAYER_NORM_EPS:g}"),
        "n_inner": (hf_config.get("n_inner") in (None, 4 * int(hf_config.get("n_embd", 0))),
                    "lal's MLP is 4 × n_embd wide"),
        "tie_word_embeddings": (hf_config.get("tie_word_embeddings", True) is True,
                                "lal's output head is the token embedding (tied)"),
        "scale_attn_weights": (hf_config.get("scale_attn_weights", True) is True, "lal divides scores by √d"),
        "scale_attn_by_inverse_layer_idx": (hf_config.get("scale_attn_by_inverse_layer_idx", False) is False,
                                            "lal does not scale attention by layer"),
        "add_cross_attention": (hf_config.get("add_cross_attention", False) is False,
                                "lal's GPT is decoder-only"),
    }
    for key, (fits, why) in checks.items():
        if not fits:
            raise refuse(f"{key} = {hf_config.get(key)!r}, but {why}")
    try:
        return GPTConfig(
            vocab_size=int(hf_config["vocab_size"]), block_size=int(hf_config["n_positions"]),
            n_layer=int(hf_config["n_layer"]), n_head=int(hf_config["n_head"]), n_embd=int(hf_config["n_embd"]),
            dropout=0.0, bias=True,
        )
    except KeyError as err:
        raise refuse(f"it has no {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise refuse(str(err)) from None


def convert_gpt2_state_dict(hf_state: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 tensors → the state dict of a lal :class:`GPT` built from ``config``.

    Names gain the ``transformer.`` prefix where the file omits it, the causal-mask buffers are
    dropped, Conv1D weights are transposed to nn.Linear's layout, and the head is the token
    embedding. Any tensor missing, left over or of the wrong shape is an error that names it.
    """
    with torch.device("meta"):
        expected = GPT(config).state_dict()  # names and shapes only
    converted: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        if name.endswith(IGNORED_SUFFIXES):
            continue
        key = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        if key == "lm_head.weight":  # a tied head is saved twice by some tools: it must be the same matrix
            continue
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()  # Conv1D (in, out) → nn.Linear (out, in)
        converted[key] = tensor.to(torch.float32).contiguous()
    head = hf_state.get("lm_head.weight")
    wte = converted.get("transformer.wte.weight")
    if head is not None and wte is not None and not torch.equal(head.to(torch.float32), wte):
        raise ValueError("These weights have an output head different from the token embedding; lal's GPT "
                         "ties the two, as GPT-2 does.")
    if wte is not None:
        converted["lm_head.weight"] = wte
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise ValueError(
            "These weights are not GPT-2's layout for this config: "
            + (f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {', '.join(unexpected[:3])}{' …' if len(unexpected) > 3 else ''}" if unexpected else "")
            + ". Is config.json the one that came with model.safetensors?"
        )
    for key, tensor in converted.items():
        if tensor.shape != expected[key].shape:
            raise ValueError(
                f"{key} has shape {tuple(tensor.shape)} but config.json implies {tuple(expected[key].shape)}. "
                "Is config.json the one that came with model.safetensors?"
            )
    return converted


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The inverse of :func:`convert_gpt2_state_dict`: ``model``'s weights as OpenAI's GPT-2 files name them.

    No ``transformer.`` prefix, Conv1D matrices as ``(in, out)``, the tied head only as ``wte.weight``
    and each block's causal mask as an ``h.N.attn.bias`` buffer, exactly the layout of
    ``model.safetensors`` on the Hub. Tensors are copies: changing them leaves ``model`` alone.
    """
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # the same tensor as wte.weight
            continue
        key = name.removeprefix("transformer.")
        state[key] = (tensor.t() if key.endswith(CONV1D_WEIGHTS) else tensor).detach().clone().contiguous()
    T = model.config.block_size
    for layer in range(model.config.n_layer):
        state[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(1, 1, T, T)).to(model.transformer.wte.weight.dtype)
    return state


# --------------------------------------------------------------------------- downloading


def gpt2_release(name: str) -> GPT2Release:
    if name not in GPT2_RELEASES:
        raise ValueError(f"Unknown GPT-2 model {name!r}. Choose one of: {', '.join(GPT2_RELEASES)}, or a folder.")
    return GPT2_RELEASES[name]


def gpt2_cache_folder(name: str) -> Path:
    """Where :func:`download_gpt2` keeps the files of ``name``."""
    return cache_dir() / "gpt2" / gpt2_release(name).name


def download_gpt2(
    name: str,
    *,
    base_url: str = HF_BASE_URL,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    session: requests.Session | None = None,
) -> Path:
    """The cache folder holding verified ``config.json`` and ``model.safetensors`` of ``name``.

    Nothing is fetched when the folder already holds both files as they were verified. Each file is
    streamed into a temporary file beside its final name and hashed on the way; only a file whose
    SHA-256 matches (the pinned one, else the one the server states) is renamed into place, so an
    interrupted download never leaves a file that looks complete.
    """
    release = gpt2_release(name)
    folder = gpt2_cache_folder(name)
    if _verified_record(folder) is not None:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    record = {}
    for filename in GPT2_FILES:
        record[filename] = _download_file(release, filename, folder, base_url, timeout_s, session)
    _write_json_atomically(folder / VERIFIED_FILE, record)
    return folder


def _verified_record(folder: Path) -> dict[str, Any] | None:
    """The record of a complete earlier download, or None when a file is missing or changed size."""
    try:
        record = json.loads((folder / VERIFIED_FILE).read_text(encoding="utf-8"))
        if all((folder / name).stat().st_size == record[name]["bytes"] for name in GPT2_FILES):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _download_file(release: GPT2Release, filename: str, folder: Path, base_url: str, timeout_s: float,
                   session: requests.Session | None) -> dict[str, Any]:
    url = release.url(filename, base_url)
    advice = _offline_advice(release)
    handle, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".part")
    tmp_path = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            digest, n_bytes, headers = _stream_to_file(url, out, f"{release.name}'s {filename}", advice,
                                                       timeout_s, session)
        expected = release.sha256.get(filename) or _stated_sha256(headers)
        if expected is not None and digest != expected:
            raise DownloadError(
                f"{release.name}'s {filename} from {url} does not match its SHA-256 (expected {expected}, got "
                f"{digest}, {n_bytes:,} bytes): the download was cut short or the file changed. Nothing was "
                "kept. " + advice
            )
        os.replace(tmp_path, folder / filename)
    finally:
        tmp_path.unlink(missing_ok=True)
    return {"sha256": digest, "bytes": n_bytes, "url": url}


def _stated_sha256(headers: Mapping[str, str]) -> str | None:
    """The SHA-256 the Hugging Face Hub states for a large (LFS) file, if any: its linked ETag."""
    value = headers.get("x-linked-etag", "").removeprefix("W/").strip('"').lower()
    return value if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else None


def _offline_advice(release: GPT2Release) -> str:
    return (
        "Check your internet connection and try again. Without internet, copy config.json and "
        f"model.safetensors from {HF_BASE_URL}/{release.repo} into a folder and pass that folder instead "
        f"of the name (load_gpt2('my_folder'), lal generate --gpt2 my_folder)."
    )


def _write_json_atomically(path: Path, values: Mapping[str, Any]) -> None:
    tmp_path = path.with_name(f".{path.name}.tmp")
    tmp_path.write_text(json.dumps(values, indent=2), encoding="utf-8")
    os.replace(tmp_path, path)
