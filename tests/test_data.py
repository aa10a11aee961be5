"""Tests for lal.data: downloads against a local HTTP server, splits, batches, token files."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from lal import data
from lal.data import DATASETS, DatasetInfo, DownloadError
from conftest import skip_unless_available
from lal.tokenizers import TiktokenTokenizer, TiktokenUnavailableError
from local_server import LocalServer

BODY = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n".encode("utf-8") * 50
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()


# --------------------------------------------------------------------------- a local web server


@pytest.fixture
def server():
    srv = LocalServer({"/shakes.txt": (200, "text/plain", BODY),
                       "/wrong.txt": (200, "text/plain", b"<html>error page</html>")})
    yield srv
    srv.close()


def closed_port_url() -> str:
    """The address of a port nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/shakes.txt"


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """A fresh, empty cache; no LAL_DATA_DIR; the verification memo cleared."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LAL_CACHE_DIR", str(cache))
    monkeypatch.delenv("LAL_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "_VERIFIED", {})
    return cache


def register(monkeypatch, url: str, sha256: str = BODY_SHA256) -> DatasetInfo:
    info = DatasetInfo(name="test-shakes", url=url, sha256=sha256, filename="shakes.txt", size_bytes=len(BODY))
    monkeypatch.setitem(DATASETS, info.name, info)
    return info


# --------------------------------------------------------------------------- registry and folders


def test_tinyshakespeare_is_registered_with_its_checksum():
    info = DATASETS["tinyshakespeare"]
    assert info.url == "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    assert info.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert info.size_bytes == 1_115_394
    assert info.filename == "tinyshakespeare.txt"


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="Unknown dataset 'shakespear'.*tinyshakespeare"):
        data.dataset_path("shakespear")


def test_folders_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("LAL_CACHE_DIR", raising=False)
    monkeypatch.delenv("LAL_DATA_DIR", raising=False)
    assert data.cache_dir() == Path.home() / ".cache" / "lal"
    assert data.data_dir() == data.cache_dir()
    monkeypatch.setenv("LAL_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("LAL_DATA_DIR", str(tmp_path / "d"))
    assert data.cache_dir() == tmp_path / "c"
    assert data.data_dir() == tmp_path / "d"


# --------------------------------------------------------------------------- downloading


def test_download_verifies_caches_and_is_not_repeated(server, dirs, monkeypatch):
    register(monkeypatch, server.url("/shakes.txt"))
    path = data.dataset_path("test-shakes")
    assert path == dirs / "shakes.txt"
    assert path.read_bytes() == BODY
    assert sorted(os.listdir(dirs)) == ["shakes.txt"]  # no temporary file left behind
    assert data.dataset_path("test-shakes") == path
    assert data.load_text("test-shakes") == BODY.decode("utf-8")
    assert [p for p, _ in server.log] == ["/shakes.txt"]  # one request for three calls
    assert server.log[0][1].startswith("lal/") and "(+https://" in server.log[0][1]


def test_download_accepts_an_overriding_url(server, dirs):
    info = DatasetInfo("mirror", "http://unused.invalid/x", BODY_SHA256, "m.txt", len(BODY))
    path = data.download(info, url=server.url("/shakes.txt"), dest_dir=dirs / "elsewhere")
    assert path == dirs / "elsewhere" / "m.txt" and path.read_bytes() == BODY


def test_checksum_mismatch_raises_and_keeps_nothing(server, dirs, monkeypatch):
    register(monkeypatch, server.url("/wrong.txt"))
    with pytest.raises(DownloadError) as caught:
        data.dataset_path("test-shakes")
    message = str(caught.value)
    assert BODY_SHA256 in message
    assert hashlib.sha256(b"<html>error page</html>").hexdigest() in message
    assert "LAL_DATA_DIR" in message
    assert os.listdir(dirs) == []


def test_server_down_says_what_to_do(dirs, monkeypatch):
    register(monkeypatch, closed_port_url())
    with pytest.raises(DownloadError, match="Check your internet connection.*LAL_DATA_DIR"):
        data.dataset_path("test-shakes")
    assert os.listdir(dirs) == []


def test_http_error_names_the_status(server, dirs, monkeypatch):
    register(monkeypatch, server.url("/missing.txt"))
    with pytest.raises(DownloadError, match="HTTP 404"):
        data.dataset_path("test-shakes")


def test_slow_server_times_out(dirs):
    slow = LocalServer({"/shakes.txt": (200, "text/plain", BODY)}, delay_s=1.0)
    try:
        info = DatasetInfo("slow", slow.url("/shakes.txt"), BODY_SHA256, "slow.txt")
        with pytest.raises(DownloadError, match="timed out after 0.2 s"):
            data.download(info, timeout_s=0.2)
    finally:
        slow.close()
    assert os.listdir(dirs) == []


def test_cached_file_works_offline(server, dirs, monkeypatch):
    register(monkeypatch, server.url("/shakes.txt"))
    first = data.dataset_path("test-shakes")
    register(monkeypatch, closed_port_url())
    monkeypatch.setattr(data, "_VERIFIED", {})  # a new session: the file is checked again
    assert data.dataset_path("test-shakes", download=False) == first
    assert data.load_text("test-shakes") == BODY.decode("utf-8")


def test_missing_file_without_download_says_how_to_get_it(dirs, monkeypatch):
    register(monkeypatch, closed_port_url())
    with pytest.raises(FileNotFoundError, match="download=True.*LAL_DATA_DIR"):
        data.dataset_path("test-shakes", download=False)


def test_corrupt_cached_file_is_downloaded_again(server, dirs, monkeypatch):
    register(monkeypatch, server.url("/shakes.txt"))
    dirs.mkdir()
    (dirs / "shakes.txt").write_bytes(BODY[:100])  # an interrupted copy from an older tool
    assert data.dataset_path("test-shakes").read_bytes() == BODY
    assert len(server.log) == 1


def test_lal_data_dir_is_used_without_network_and_never_written(server, dirs, tmp_path, monkeypatch):
    provided = tmp_path / "provided"
    provided.mkdir()
    (provided / "shakes.txt").write_bytes(BODY)
    provided.chmod(0o555)
    monkeypatch.setenv("LAL_DATA_DIR", str(provided))
    register(monkeypatch, server.url("/shakes.txt"))
    try:
        assert data.dataset_path("test-shakes") == provided / "shakes.txt"
        assert data.load_text("test-shakes") == BODY.decode("utf-8")
    finally:
        provided.chmod(0o755)
    assert server.log == []
    assert os.listdir(provided) == ["shakes.txt"]
    assert not dirs.exists()


def test_lal_data_dir_file_with_wrong_checksum_is_an_error(tmp_path, dirs, monkeypatch):
    (tmp_path / "shakes.txt").write_bytes(BODY + b"extra")
    monkeypatch.setenv("LAL_DATA_DIR", str(tmp_path))
    register(monkeypatch, closed_port_url())
    with pytest.raises(DownloadError, match="does not match the SHA-256.*unset LAL_DATA_DIR"):
        data.dataset_path("test-shakes")


def test_each_unchanged_file_is_hashed_once(tmp_path, dirs, monkeypatch):
    (tmp_path / "shakes.txt").write_bytes(BODY)
    monkeypatch.setenv("LAL_DATA_DIR", str(tmp_path))
    register(monkeypatch, closed_port_url())
    hashed = []
    real_sha256 = data._sha256_file
    monkeypatch.setattr(data, "_sha256_file", lambda p: hashed.append(p) or real_sha256(p))
    for _ in range(3):
        data.dataset_path("test-shakes")
    assert len(hashed) == 1
    (tmp_path / "shakes.txt").write_bytes(BODY[:-1] + b"?")  # same size, new content and mtime
    os.utime(tmp_path / "shakes.txt", ns=(1, 1))
    with pytest.raises(DownloadError):
        data.dataset_path("test-shakes")
    assert len(hashed) == 2


def test_real_tinyshakespeare_when_provided():
    folder = os.environ.get("LAL_DATA_DIR")
    skip_unless_available(bool(folder) and (Path(folder) / "tinyshakespeare.txt").is_file(),
                          "set LAL_DATA_DIR to a folder holding tinyshakespeare.txt")
    text = data.load_text("tinyshakespeare")
    assert len(text) == 1_115_394 and len(set(text)) == 65
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    train, val = data.split_train_val(text)
    assert (len(train), len(val)) == (1_003_854, 111_540)  # nanoGPT's shakespeare_char split


# --------------------------------------------------------------------------- reading your own text


def test_load_text_reads_a_path(tmp_path):
    (tmp_path / "mine.txt").write_text("héllo\r\nwörld\n", encoding="utf-8", newline="")
    assert data.load_text(tmp_path / "mine.txt") == "héllo\nwörld\n"
    assert data.load_text(str(tmp_path / "mine.txt")) == "héllo\nwörld\n"


def test_load_text_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a known dataset \\(tinyshakespeare\\) nor an existing file"):
        data.load_text(tmp_path / "nope.txt")
    with pytest.raises(IsADirectoryError, match="build_corpus"):
        data.load_text(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8 \\(byte 3"):
        data.load_text(tmp_path / "latin1.txt")


# --------------------------------------------------------------------------- splitting


@pytest.mark.parametrize(("n", "fraction", "n_train"), [(1000, 0.1, 900), (1001, 0.1, 900), (10, 0.25, 7)])
def test_split_is_contiguous_exact_and_disjoint(n, fraction, n_train):
    tokens = torch.arange(n)
    train, val = data.split_train_val(tokens, fraction)
    assert (len(train), len(val)) == (n_train, n - n_train)
    assert torch.equal(torch.cat([train, val]), tokens)
    assert train[-1] < val[0]  # every train token precedes every validation token


def test_split_rejects_bad_fractions_and_tiny_data():
    with pytest.raises(ValueError, match="between 0 and 1"):
        data.split_train_val(list(range(10)), 1.0)
    with pytest.raises(ValueError, match="too few"):
        data.split_train_val([1], 0.1)


# --------------------------------------------------------------------------- batches


def test_get_batch_shapes_and_shifted_targets():
    tokens = torch.arange(1000)
    x, y = data.get_batch(tokens, batch_size=8, block_size=16, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    assert torch.equal(y, x + 1)  # each window is a consecutive slice of the data
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(8, 16))


def test_get_batch_reaches_every_start_and_never_runs_off_the_end():
    tokens = torch.arange(10, 22)  # 12 tokens, block_size 9: starts 0, 1, 2 are the only valid ones
    generator = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(50):
        x, y = data.get_batch(tokens, batch_size=4, block_size=9, generator=generator)
        starts.update((x[:, 0] - 10).tolist())
        assert int(y.max()) <= 21
    assert starts == {0, 1, 2}


def test_get_batch_with_exactly_one_window():
    tokens = torch.tensor([5, 3, 8, 1])
    x, y = data.get_batch(tokens, batch_size=2, block_size=3)
    assert x.tolist() == [[5, 3, 8]] * 2 and y.tolist() == [[3, 8, 1]] * 2


def test_get_batch_is_reproducible_and_memmap_matches_tensor(tmp_path):
    tokens = torch.randint(0, 300, (5000,), generator=torch.Generator().manual_seed(1))
    memmap = data.open_token_file(data.write_token_file(tokens, tmp_path / "t.bin", vocab_size=300))
    a = data.get_batch(tokens, 6, 32, generator=torch.Generator().manual_seed(7))
    b = data.get_batch(tokens, 6, 32, generator=torch.Generator().manual_seed(7))
    c = data.get_batch(memmap, 6, 32, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    assert c[0].dtype == torch.long
    d = data.get_batch(tokens, 6, 32, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a[0], d[0])


def test_get_batch_rejects_unusable_data():
    with pytest.raises(ValueError, match="has 8 tokens, but one window needs block_size \\+ 1 = 9"):
        data.get_batch(torch.arange(8), 2, 8)
    with pytest.raises(ValueError, match="integer token ids"):
        data.get_batch(torch.rand(100), 2, 8)
    with pytest.raises(TypeError, match="torch.tensor\\(ids, dtype=torch.long\\)"):
        data.get_batch(list(range(100)), 2, 8)


def test_eval_windows_are_fixed_by_the_seed():
    a = data.eval_windows(1000, 20, 64, seed=3)
    assert torch.equal(a, data.eval_windows(torch.arange(1000), 20, 64, seed=3))
    assert not torch.equal(a, data.eval_windows(1000, 20, 64, seed=4))
    assert a.shape == (20,) and int(a.min()) >= 0 and int(a.max()) <= 1000 - 64 - 1


def test_batches_from_windows_cover_the_windows_in_order():
    tokens = torch.arange(100, 300)
    starts = data.eval_windows(tokens, 10, 16, seed=0)
    batches = list(data.batches_from_windows(tokens, starts, block_size=16, batch_size=4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x[:, 0], starts + 100)
    assert torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="made for other data"):
        next(data.batches_from_windows(torch.arange(20), starts, block_size=16, batch_size=4))


# --------------------------------------------------------------------------- token files


@pytest.mark.parametrize(
    ("vocab_size", "dtype"), [(65, np.uint16), (65_536, np.uint16), (65_537, np.uint32), (100_277, np.uint32)]
)
def test_token_file_round_trip(tmp_path, vocab_size, dtype):
    ids = [0, 1, vocab_size - 1, 7, vocab_size // 2]
    path = data.write_token_file(ids, tmp_path / "tokens.bin", vocab_size=vocab_size)
    memmap = data.open_token_file(path)
    assert memmap.dtype == dtype and memmap.tolist() == ids
    assert path.stat().st_size == len(ids) * np.dtype(dtype).itemsize
    meta = json.loads((tmp_path / "tokens.bin.json").read_text(encoding="utf-8"))
    assert meta == {
        "format": "lal-tokens", "version": 1, "dtype": np.dtype(dtype).name, "vocab_size": vocab_size, "n_tokens": 5
    }


def test_token_file_errors(tmp_path):
    with pytest.raises(ValueError, match="must lie in \\[0, 10\\), found ids from 0 to 10"):
        data.write_token_file([0, 10], tmp_path / "a.bin", vocab_size=10)
    with pytest.raises(ValueError, match="does not fit in uint16"):
        data.write_token_file([70_000], tmp_path / "a.bin", dtype=np.uint16)
    path = data.write_token_file(np.arange(10), tmp_path / "b.bin")
    with open(path, "r+b") as f:
        f.truncate(6)
    with pytest.raises(ValueError, match="truncated"):
        data.open_token_file(path)


def test_raw_token_file_opens_with_an_explicit_dtype(tmp_path):
    raw = tmp_path / "train.bin"  # nanoGPT writes bare uint16 files
    np.array([3, 1, 4, 1, 5], dtype=np.uint16).tofile(raw)
    with pytest.raises(ValueError, match="dtype=np.uint16"):
        data.open_token_file(raw)
    assert data.open_token_file(raw, dtype=np.uint16).tolist() == [3, 1, 4, 1, 5]


class CharTokenizer:
    """The smallest tokenizer: one id per character of a fixed alphabet."""

    def __init__(self, text: str) -> None:
        self.stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
        self.vocab_size = len(self.stoi)

    def encode(self, text: str) -> list[int]:
        return [self.stoi[ch] for ch in text]


STREAM_TEXT = "First Citizen:\nBefore we proceed\n\n\nAll:\n  Speak, speak. \nSecond:\r\nYou are\n" * 40


@pytest.mark.parametrize("chunk_chars", [1, 7, 64, 1 << 20])
def test_streaming_encoder_equals_whole_text_encoding(tmp_path, chunk_chars):
    source = tmp_path / "corpus.txt"
    source.write_text(STREAM_TEXT, encoding="utf-8", newline="")
    tokenizer = CharTokenizer(data.load_text(source))
    out = data.encode_file_to_tokens(source, tokenizer, tmp_path / "corpus.bin", chunk_chars=chunk_chars)
    expected = tokenizer.encode(data.load_text(source))
    assert data.open_token_file(out).tolist() == expected
    assert "\r" not in data.load_text(source)  # universal newlines, in both readers


def test_streaming_encoder_cuts_only_where_gpt2_tokens_cannot_straddle(tmp_path):
    try:
        encoding = TiktokenTokenizer().encoding
    except TiktokenUnavailableError as err:
        skip_unless_available(False, str(err))
    source = tmp_path / "corpus.txt"
    source.write_text(STREAM_TEXT, encoding="utf-8")
    expected = encoding.encode_ordinary(data.load_text(source))
    # "\n\n" is one GPT-2 token: a cut after any newline would change the ids.
    assert 628 in expected
    encoder = type("R50k", (), {"encode": staticmethod(encoding.encode_ordinary), "vocab_size": encoding.n_vocab})
    for chunk_chars in (1, 5, 33):
        out = data.encode_file_to_tokens(source, encoder, tmp_path / "corpus.bin", chunk_chars=chunk_chars)
        assert data.open_token_file(out).tolist() == expected
