"""Datasets, train/validation splits and batches of random windows.

Three jobs, in the order a chapter meets them:

1. **Getting the text.** Datasets have a name, a URL and a SHA-256 (:data:`DATASETS`). A file is
   downloaded once into a cache, verified, and read offline from then on. A folder named by the
   ``LAL_DATA_DIR`` environment variable is searched first: on a machine without internet, put
   the files there and nothing is ever downloaded.
2. **Splitting it.** The first 90 % of the tokens train, the last 10 % validate, exactly as
   nanoGPT does, so validation losses compare with published figures.
3. **Batching it.** A language model learns from windows of ``block_size`` tokens cut at random
   places; the target of every position is the next token. Evaluation uses a *fixed* set of
   windows so that two evaluations score the same tokens and their losses compare.

Token files (:func:`write_token_file`, :func:`open_token_file`) are memory-mapped, so a corpus
larger than RAM trains with the same :func:`get_batch` as TinyShakespeare.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TextIO, TypeVar, Union

import numpy as np
import requests
import torch

from lal import REPOSITORY_URL, __version__

if TYPE_CHECKING:  # only for type hints: lal.tokenizers is imported where it is used
    from lal.tokenizers import Tokenizer

#: Sent with every request, so a server's owner can see who is asking and where to read about it.
USER_AGENT = f"lal/{__version__} (+{REPOSITORY_URL})"

#: Seconds to wait for the server to answer (connect, then each read); a dead server fails fast.
DEFAULT_TIMEOUT_S = 30.0

_CHUNK_BYTES = 1 << 16

#: A 1-D sequence of token ids: a torch tensor in memory or a numpy memmap on disk.
TokenData = Union[torch.Tensor, np.ndarray]

_Tokens = TypeVar("_Tokens")  # anything sliceable: a list, str, tensor or array of tokens


class DownloadError(RuntimeError):
    """A dataset file could not be downloaded or does not match its checksum.

    The message always says what to do next: check the connection, try again, or put the file
    in a folder by hand and point ``LAL_DATA_DIR`` at it.
    """


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset lives and how to recognise the right file.

    The SHA-256 is what makes a cached file trustworthy: a truncated download, an HTML error page
    saved under the file's name, or a changed upstream file all fail the check instead of
    silently training on the wrong text.
    """

    name: str
    url: str
    sha256: str
    filename: str
    size_bytes: int | None = None
    description: str = ""


DATASETS: dict[str, DatasetInfo] = {
    "tinyshakespeare": DatasetInfo(
        name="tinyshakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        filename="tinyshakespeare.txt",
        size_bytes=1_115_394,
        description="40,000 lines from Shakespeare's plays, collected by Andrej Karpathy for char-rnn "
        "(public domain; 1,115,394 characters, 65 distinct).",
    ),
}

# Files already hashed in this process, keyed by (path, size, modification time): checking a
# dataset is then free after the first call, yet a file changed on disk is hashed again.
_VERIFIED: dict[tuple[str, int, int], str] = {}


# --------------------------------------------------------------------------- where files live


def cache_dir() -> Path:
    """The folder downloads go to: ``LAL_CACHE_DIR`` if set, else ``~/.cache/lal``."""
    configured = os.environ.get("LAL_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lal"


def data_dir() -> Path:
    """The folder dataset files are looked up in first.

    ``LAL_DATA_DIR`` if set: a folder that already holds the files (it may be read-only; nothing
    is ever written there). Otherwise the download cache, :func:`cache_dir`.
    """
    configured = os.environ.get("LAL_DATA_DIR")
    return Path(configured).expanduser() if configured else cache_dir()


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for ``name``; a ``ValueError`` naming the known datasets otherwise."""
    if name not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(
            f"Unknown dataset {name!r}. Known datasets: {known}. "
            "For your own text, pass the path of a text file instead."
        )
    return DATASETS[name]


def dataset_path(dataset: str | DatasetInfo, download: bool = True) -> Path:
    """The path of a verified copy of ``dataset``, downloading it only when no copy exists.

    Looks in ``LAL_DATA_DIR`` first, then in the cache; downloads into the cache last. A copy in
    ``LAL_DATA_DIR`` that fails its checksum is an error (that folder is yours, so it is left
    alone); a cached copy that fails is replaced by a fresh download.
    """
    info = dataset_info(dataset) if isinstance(dataset, str) else dataset
    configured = os.environ.get("LAL_DATA_DIR")
    if configured:
        provided = Path(configured).expanduser() / info.filename
        if provided.is_file():
            _check_provided_file(provided, info)
            return provided
    cached = cache_dir() / info.filename
    if cached.is_file() and _matches_checksum(cached, info.sha256):
        return cached
    if not download:
        raise FileNotFoundError(
            f"{info.name} is not in the cache ({cached}) and download=False. Call "
            f"dataset_path({info.name!r}) with download=True, or put {info.filename} in a folder "
            "and set LAL_DATA_DIR to that folder."
        )
    try:
        return _download(info)
    except DownloadError as err:
        if not cached.is_file():
            raise
        raise DownloadError(
            f"The cached copy {cached} does not match the SHA-256 of {info.name} (it was damaged or "
            f"changed), and downloading a fresh one failed: {err}"
        ) from None


def _check_provided_file(path: Path, info: DatasetInfo) -> None:
    """Raise a ``DownloadError`` when a file the learner provided is not the expected one."""
    if not _matches_checksum(path, info.sha256):
        raise DownloadError(
            f"{path} does not match the SHA-256 of {info.name} (expected {info.sha256}, got "
            f"{_cached_sha256(path)}). Replace it with the file from {info.url}, or unset "
            "LAL_DATA_DIR to let lal download it."
        )


# --------------------------------------------------------------------------- checksums


def _sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks so large files never sit whole in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_sha256(path: Path) -> str:
    """The SHA-256 of ``path``, hashed once per process for as long as the file is unchanged."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = _sha256_file(path)
    return _VERIFIED[key]


def _matches_checksum(path: Path, expected_sha256: str) -> bool:
    return _cached_sha256(path) == expected_sha256.lower()


# --------------------------------------------------------------------------- downloading


def download(
    dataset: str | DatasetInfo,
    *,
    url: str | None = None,
    dest_dir: str | Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    session: requests.Session | None = None,
) -> Path:
    """Download ``dataset`` into ``dest_dir`` (default: the cache), verify it, and return its path.

    This always downloads; :func:`dataset_path` is the function to call, since it downloads only
    when no verified copy exists. ``url`` overrides the registered address (a mirror, or a local
    server in tests).

    The bytes are streamed into a temporary file in the destination folder and hashed while
    they are written; only a file whose SHA-256 matches is renamed into place (``os.replace``
    is atomic), so an interrupted or corrupted download never leaves a file that looks valid.
    """
    info = dataset_info(dataset) if isinstance(dataset, str) else dataset
    return _download(info, url=url, dest_dir=dest_dir, timeout_s=timeout_s, session=session)


def _download(
    info: DatasetInfo,
    *,
    url: str | None = None,
    dest_dir: str | Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    session: requests.Session | None = None,
) -> Path:
    """The body of :func:`download`; separate because :func:`dataset_path`'s ``download`` flag hides the name."""
    source = url or info.url
    folder = Path(dest_dir) if dest_dir is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / info.filename
    handle, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{info.filename}.", suffix=".part")
    tmp_path = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            digest, n_bytes, _ = _stream_to_file(source, out, info.name, _offline_advice(info), timeout_s, session)
        if digest != info.sha256.lower():
            raise DownloadError(
                f"The file downloaded from {source} does not match the SHA-256 of {info.name}: "
                f"expected {info.sha256}, got {digest} ({n_bytes:,} bytes"
                + (f", expected {info.size_bytes:,}" if info.size_bytes is not None else "")
                + "). The server may have sent an error page, or the download was cut short. "
                "Nothing was kept. Try again later, or download the file by hand, check it, put "
                f"it in a folder as {info.filename} and set LAL_DATA_DIR to that folder."
            )
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)
    return target


def _stream_to_file(
    url: str,
    out: BinaryIO,
    what: str,
    advice: str,
    timeout_s: float,
    session: requests.Session | None,
) -> tuple[str, int, dict[str, str]]:
    """Write the body at ``url`` into ``out``; return its SHA-256, its length and the response headers.

    Every way the network can fail becomes a ``DownloadError`` naming ``what`` was being downloaded
    and ending with ``advice`` (what to do). The headers (lower-case names) include those of any
    redirect on the way: a server may state the file's checksum there.
    """
    http = session or requests
    digest = hashlib.sha256()
    n_bytes = 0
    try:
        with http.get(url, stream=True, timeout=timeout_s, headers={"User-Agent": USER_AGENT}) as response:
            response.raise_for_status()
            hops = (*response.history, response)  # redirects first, then the final answer
            headers = {name.lower(): value for hop in hops for name, value in hop.headers.items()}
            for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                n_bytes += len(chunk)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise DownloadError(f"Downloading {what} from {url} failed: the server answered HTTP {status}. " + advice) from exc
    except requests.Timeout as exc:
        raise DownloadError(f"Downloading {what} from {url} timed out after {timeout_s:g} s. " + advice) from exc
    except requests.RequestException as exc:
        raise DownloadError(f"Could not download {what} from {url}: {exc.__class__.__name__}. " + advice) from exc
    return digest.hexdigest(), n_bytes, headers


def _offline_advice(info: DatasetInfo) -> str:
    return (
        "Check your internet connection and try again. Without internet, copy "
        f"{info.filename} (from {info.url}) into a folder and set the environment variable "
        "LAL_DATA_DIR to that folder."
    )


# --------------------------------------------------------------------------- reading text


def load_text(name_or_path: str | Path) -> str:
    """The text of a registered dataset (by name) or of your own UTF-8 text file (by path).

    Line endings are normalised to ``\\n`` (Python's universal newlines), the same way
    :func:`encode_file_to_tokens` reads files, so both see the same characters.
    """
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        return dataset_path(name_or_path).read_text(encoding="utf-8")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder. Combine its files into one text file with "
            "lal.corpus.build_corpus(paths=[folder], out='corpus.txt'), then load that."
        )
    if not path.is_file():
        known = ", ".join(sorted(DATASETS))
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is neither a known dataset ({known}) nor an existing file. "
            "Check the spelling, or give the full path to a text file."
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not valid UTF-8 (byte {exc.start} cannot be decoded). Save it as UTF-8 "
            "in your editor, or convert it, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`."
        ) from exc


# --------------------------------------------------------------------------- splitting


def split_train_val(tokens: _Tokens, val_fraction: float = 0.1) -> tuple[_Tokens, _Tokens]:
    """Split ``tokens`` into (train, val): the first ``1 - val_fraction`` and the rest.

    A contiguous split, not a shuffled one: windows drawn from the train part never contain
    validation text, so the validation loss measures text the model has not seen. The
    proportions and rounding are nanoGPT's (``int(n * 0.9)``), so on TinyShakespeare the
    losses compare with its published figures. Returns slices of the input's own type
    (tensor views, memmap views, list copies).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}.")
    n = len(tokens)
    n_train = int(n * (1 - val_fraction))
    if n_train == 0:
        raise ValueError(
            f"{n} tokens are too few to split with val_fraction={val_fraction}: the training part "
            "would be empty. Use more text."
        )
    return tokens[:n_train], tokens[n_train:]


# --------------------------------------------------------------------------- batches


def get_batch(
    data: TokenData,
    batch_size: int,
    block_size: int,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``batch_size`` random windows: inputs ``x`` and targets ``y``, both (B, T) long.

    ``y`` is ``x`` shifted left by one: the target at each position is the token that follows
    it. Window starts are drawn with ``torch.randint`` on the CPU (from ``generator`` when given),
    so a tensor and a memmap holding the same tokens give the same batch for the same seed.
    """
    _check_batch_args(data, batch_size, block_size)
    n_starts = len(data) - block_size  # the last start still leaves room for the shifted target
    starts = torch.randint(n_starts, (batch_size,), generator=generator)  # (B,)
    return _windows_at(data, starts, block_size, device)


def eval_windows(
    data_or_length: TokenData | int, n_windows: int, block_size: int, seed: int = 0
) -> torch.Tensor:
    """A fixed, seeded set of ``n_windows`` window start offsets, shape (n_windows,) long.

    Random batches make two evaluations score different tokens, and their difference is then
    partly noise. Scoring the same windows every time makes validation losses comparable from
    one evaluation to the next, and from one run to another with the same seed.
    """
    n_tokens = data_or_length if isinstance(data_or_length, int) else len(data_or_length)
    if n_tokens < block_size + 1:
        raise ValueError(
            f"Need at least block_size + 1 = {block_size + 1} tokens for one window, got {n_tokens}."
        )
    if n_windows <= 0:
        raise ValueError(f"n_windows must be positive, got {n_windows}.")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(n_tokens - block_size, (n_windows,), generator=generator)


def batches_from_windows(
    data: TokenData,
    starts: torch.Tensor,
    block_size: int,
    batch_size: int,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches, each (≤ batch_size, T) long, covering the windows at ``starts`` in order."""
    _check_batch_args(data, batch_size, block_size)
    if len(starts) == 0:
        return
    if int(starts.max()) + block_size >= len(data) or int(starts.min()) < 0:
        raise ValueError(
            f"Window starts must lie in [0, {len(data) - block_size - 1}] for {len(data)} tokens and "
            f"block_size={block_size}; were they made for other data? Make them with eval_windows(data, ...)."
        )
    for first in range(0, len(starts), batch_size):
        yield _windows_at(data, starts[first : first + batch_size], block_size, device)


def _check_batch_args(data: TokenData, batch_size: int, block_size: int) -> None:
    """Reject data and sizes ``get_batch`` cannot use, with a message that says why."""
    if batch_size <= 0 or block_size <= 0:
        raise ValueError(f"batch_size and block_size must be positive, got {batch_size} and {block_size}.")
    if isinstance(data, torch.Tensor):
        is_integer = not (data.dtype.is_floating_point or data.dtype.is_complex or data.dtype == torch.bool)
    elif isinstance(data, np.ndarray):
        is_integer = np.issubdtype(data.dtype, np.integer)
    else:
        raise TypeError(
            f"data must be a 1-D torch tensor or numpy array of token ids, got {type(data).__name__}. "
            "Convert a list with torch.tensor(ids, dtype=torch.long)."
        )
    if data.ndim != 1 or not is_integer:
        raise ValueError(f"data must be 1-D integer token ids, got shape {tuple(data.shape)} and dtype {data.dtype}.")
    if len(data) < block_size + 1:
        raise ValueError(
            f"The data has {len(data)} tokens, but one window needs block_size + 1 = {block_size + 1} "
            "(inputs plus the shifted target). Use more text or a smaller block_size."
        )


def _windows_at(
    data: TokenData, starts: torch.Tensor, block_size: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the windows beginning at ``starts`` in one indexing operation, no Python loop.

    ``unfold`` (numpy: ``sliding_window_view``) views the data as all its windows of length
    T+1 without copying anything; indexing that view with ``starts`` copies just the B we need.
    """
    if isinstance(data, torch.Tensor):
        all_windows = data.unfold(0, block_size + 1, 1)  # (N-T, T+1), a view
        windows = all_windows[starts.to(data.device)].long()  # (B, T+1)
    else:
        all_windows = np.lib.stride_tricks.sliding_window_view(data, block_size + 1)  # (N-T, T+1), a view
        windows = torch.from_numpy(all_windows[starts.numpy()].astype(np.int64))  # (B, T+1)
    x = windows[:, :-1].contiguous()  # (B, T)
    y = windows[:, 1:].contiguous()  # (B, T)
    return batch_to_device(x, y, device)


def batch_to_device(x: torch.Tensor, y: torch.Tensor, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a batch to ``device``; to a GPU through pinned memory, without waiting for the copy."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        # Pinned host memory lets the copy overlap with the GPU's work instead of stalling it.
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# --------------------------------------------------------------------------- token files


def _sidecar(path: Path) -> Path:
    """The small JSON file beside a token file that records its dtype and vocabulary size."""
    return path.with_name(path.name + ".json")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below ``vocab_size``: uint16 or uint32.

    Two bytes per token halves the file (and the page cache it occupies) for every vocabulary
    up to 65,536 ids, GPT-2's 50,257 included.
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}.")
    if vocab_size <= 2**16:
        return np.dtype(np.uint16)
    if vocab_size <= 2**32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size {vocab_size} does not fit in 32-bit token ids.")


def write_token_file(
    ids: Sequence[int] | np.ndarray | torch.Tensor,
    path: str | Path,
    vocab_size: int | None = None,
    dtype: np.dtype | type | str | None = None,
) -> Path:
    """Write token ids as a flat binary file plus a JSON sidecar (``<path>.json``); return ``path``.

    ``vocab_size`` defaults to ``max(ids) + 1``; ``dtype`` defaults to :func:`token_dtype`. Both
    are recorded in the sidecar so :func:`open_token_file` reads the file back correctly. The
    data is written to a temporary file and renamed into place, so a crash never leaves half a
    token file that looks whole.
    """
    array = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-D sequence of integers, got shape {array.shape} and dtype {array.dtype}.")
    highest = int(array.max()) if array.size else -1
    vocab_size = highest + 1 if vocab_size is None else vocab_size
    lowest = int(array.min()) if array.size else 0
    if lowest < 0 or highest >= vocab_size:
        raise ValueError(f"Token ids must lie in [0, {vocab_size}), found ids from {lowest} to {highest}.")
    dtype = token_dtype(max(vocab_size, 1)) if dtype is None else np.dtype(dtype)
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise ValueError(f"dtype must be uint16 or uint32, got {dtype}.")
    if highest > np.iinfo(dtype).max:
        raise ValueError(f"Token id {highest} does not fit in {dtype}; use uint32 (or leave dtype unset).")
    path = Path(path)
    _atomic_write_bytes(path, array.astype(dtype, copy=False).tobytes())
    _write_sidecar(path, dtype, vocab_size, len(array))
    return path


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` beside ``path`` and rename it into place: readers see all of it or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def _write_sidecar(path: Path, dtype: np.dtype, vocab_size: int, n_tokens: int) -> None:
    """Record how to read ``path`` back; ``n_tokens`` lets a truncated file be caught on opening."""
    meta = {"format": "lal-tokens", "version": 1, "dtype": dtype.name, "vocab_size": vocab_size, "n_tokens": n_tokens}
    _sidecar(path).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def open_token_file(path: str | Path, dtype: np.dtype | type | str | None = None) -> np.memmap:
    """Memory-map a token file written by :func:`write_token_file`; returns a read-only 1-D memmap.

    The operating system pages in only the windows a batch touches, so the corpus can be larger
    than RAM. A raw file without a sidecar (nanoGPT's ``train.bin`` is uint16) opens when you
    pass ``dtype``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No token file at {path}. Write one with write_token_file or encode_file_to_tokens.")
    sidecar = _sidecar(path)
    if sidecar.is_file():
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        file_dtype = np.dtype(meta["dtype"])
        expected_bytes = meta["n_tokens"] * file_dtype.itemsize
        if path.stat().st_size != expected_bytes:
            raise ValueError(
                f"{path} holds {path.stat().st_size} bytes but its sidecar promises {meta['n_tokens']} "
                f"{file_dtype} tokens ({expected_bytes} bytes): the file is truncated or was replaced. "
                "Write it again."
            )
    elif dtype is not None:
        file_dtype = np.dtype(dtype)
    else:
        raise ValueError(
            f"{path} has no sidecar {sidecar.name} recording its dtype. Pass dtype=np.uint16 (or the "
            "dtype it was written with), or write it again with write_token_file."
        )
    if path.stat().st_size == 0:
        raise ValueError(f"{path} holds no tokens; there is nothing to train on.")
    return np.memmap(path, dtype=file_dtype, mode="r")


class _Encoder(Protocol):
    """Anything with ``encode(str) -> list[int]``: every lal tokenizer, or a tiktoken encoding's wrapper."""

    def encode(self, text: str) -> list[int]: ...


def encode_file_to_tokens(
    text_path: str | Path,
    tokenizer: _Encoder,
    out_path: str | Path,
    chunk_chars: int = 1 << 20,
    vocab_size: int | None = None,
) -> Path:
    """Tokenize a text file into a token file, reading ``chunk_chars`` characters at a time.

    For corpora larger than RAM: neither the text nor the ids are ever whole in memory. The
    result equals ``tokenizer.encode(load_text(text_path))`` because chunks are cut only at
    safe places: just after a newline that sits between two non-space characters. GPT-2-style
    tokenizers split their input there anyway (a lone ``\\n`` is its own piece), so no token can
    straddle the cut. A cut after an arbitrary newline would not be safe: ``"\\n\\n"`` is one
    GPT-2 token, and whitespace runs at the end of a string split differently. A file with no
    such place is encoded in one piece.

    ``vocab_size`` (default ``tokenizer.vocab_size``) picks the dtype and goes into the sidecar.
    """
    if chunk_chars <= 0:
        raise ValueError(f"chunk_chars must be positive, got {chunk_chars}.")
    vocab_size = vocab_size if vocab_size is not None else getattr(tokenizer, "vocab_size", None)
    if vocab_size is None:
        raise ValueError("Pass vocab_size: the tokenizer has no vocab_size attribute to choose the dtype from.")
    dtype = token_dtype(vocab_size)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    n_tokens = 0
    try:
        with open(text_path, encoding="utf-8") as src, open(tmp, "wb") as dst:
            for piece in _safe_pieces(src, chunk_chars):
                ids = np.asarray(tokenizer.encode(piece), dtype=np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
                    raise ValueError(f"The tokenizer produced ids outside [0, {vocab_size}); is vocab_size right?")
                dst.write(ids.astype(dtype).tobytes())
                n_tokens += int(ids.size)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    _write_sidecar(out_path, dtype, vocab_size, n_tokens)
    return out_path


def _safe_pieces(src: TextIO, chunk_chars: int) -> Iterator[str]:
    """Yield the text of ``src`` in pieces cut only where tokenization cannot change (see above)."""
    pending = ""
    while chunk := src.read(chunk_chars):
        searched = max(len(pending) - 2, 0)  # the text before this was searched already, in vain
        pending += chunk
        cut = _last_safe_cut(pending, searched)
        if cut > 0:
            yield pending[:cut]
            pending = pending[cut:]
    if pending:
        yield pending


def _last_safe_cut(text: str, start: int = 0) -> int:
    """The largest ``i`` with ``text[i-2:i+1]`` = non-space, newline, non-space; 0 if none.

    Only newlines after index ``start`` are considered: the text before it was searched already.
    """
    newline = text.rfind("\n", start + 1)
    while newline > start:
        cut = newline + 1
        if cut < len(text) and not text[newline - 1].isspace() and not text[cut].isspace():
            return cut
        newline = text.rfind("\n", start + 1, newline)
    return 0


# --------------------------------------------------------------------------- from text to tokens

#: Texts larger than this are tokenized into a memory-mapped token file instead of held in memory.
STREAM_THRESHOLD_BYTES = 64 * 2**20

#: A BPE tokenizer for a large corpus learns its merges from this many characters of its start.
BPE_SAMPLE_CHARS = 16 * 2**20


@dataclass
class TokenizedText:
    """A text ready to train on: its tokenizer and its train/validation token ids."""

    tokenizer: "Tokenizer"
    train: TokenData
    val: TokenData
    description: str


def prepare_text_data(
    dataset: str | None = None,
    text_path: str | Path | None = None,
    tokenizer_kind: str = "char",
    vocab_size: int | None = None,
    tokenizer: "Tokenizer | None" = None,
    special_tokens: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    token_file: str | Path | None = None,
) -> TokenizedText:
    """Load a dataset (by name) or your own text file, tokenize it, and split it 90/10.

    The tokenizer is built from the text (``tokenizer_kind`` "char", "bpe" or "tiktoken") unless
    one is passed, as when resuming a run. Char and BPE tokenizers get the chat special tokens
    by default, so a model pretrained here can be fine-tuned with ``lal sft`` later.

    A file larger than :data:`STREAM_THRESHOLD_BYTES` is never read whole: it is tokenized in
    chunks into ``token_file`` (default: beside the text) and memory-mapped, so corpora larger
    than RAM train the same way as TinyShakespeare.
    """
    from lal.tokenizers import CHAT_SPECIAL_TOKENS, build_tokenizer

    if dataset is not None and text_path is not None:
        raise ValueError("Give either a dataset name or a text file, not both.")
    path = Path(text_path).expanduser() if text_path is not None else dataset_path(dataset or "tinyshakespeare")
    description = f"{path.name}" if text_path is not None else f"the {dataset or 'tinyshakespeare'} dataset"
    if not path.is_file():
        raise FileNotFoundError(f"No text file at {path}. Check the path (build one with `lal corpus`).")
    specials = CHAT_SPECIAL_TOKENS if special_tokens is None else special_tokens
    streamed = path.stat().st_size > STREAM_THRESHOLD_BYTES

    text = None if streamed else load_text(path)  # read once: the tokenizer learns from it, then encodes it
    if tokenizer is None:
        if tokenizer_kind == "tiktoken":
            tokenizer = build_tokenizer("tiktoken")
        else:
            sample = _tokenizer_sample(path, tokenizer_kind) if streamed else text
            tokenizer = build_tokenizer(tokenizer_kind, text=sample, vocab_size=vocab_size, special_tokens=specials)

    if streamed:
        out = Path(token_file) if token_file is not None else path.with_suffix(".tokens.bin")
        tokens: TokenData = open_token_file(encode_file_to_tokens(path, tokenizer, out))
    else:
        tokens = torch.tensor(tokenizer.encode(text, allowed_special=None), dtype=torch.long)
    train, val = split_train_val(tokens, val_fraction)
    return TokenizedText(tokenizer=tokenizer, train=train, val=val, description=description)


def _tokenizer_sample(path: Path, tokenizer_kind: str) -> str:
    """What a tokenizer learns its vocabulary from when the file is too large to read whole.

    A character vocabulary must hold every character of the file, so the whole file is scanned
    (one character set in memory, not the text). BPE merges are learned from the file's start.
    """
    with open(path, encoding="utf-8") as src:
        if tokenizer_kind == "bpe":
            return src.read(BPE_SAMPLE_CHARS)
        characters: set[str] = set()
        while chunk := src.read(1 << 22):
            characters.update(chunk)
    return "".join(sorted(characters))
