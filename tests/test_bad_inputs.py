"""Bad input and faults, tried the way a learner meets them: the ``lal`` command in a subprocess.

Every case asserts the exit code, one clear line on stderr that says what to do, no traceback,
and that nothing saved was lost. Faults the test cannot cause for real (a full or read-only
disk: the tests may run as root, which ignores permissions) are injected into the same command
by patching the one call that would fail, before ``lal.cli.main`` runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from local_server import LocalServer

ROOT = Path(__file__).resolve().parent.parent
TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 60
TINY_RUN = ["--tokenizer", "char", "--preset", "char-tiny", "--block-size", "32", "--batch-size", "8",
            "--eval-interval", "10", "--device", "cpu", "--seed", "3", "--quiet"]
RESUME_RUN = TINY_RUN[4:]  # the tokenizer and the model come from the checkpoint


def lal(*args: str, inject: str = "", stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``lal ARGS`` as a learner would; ``inject`` is Python run first, to simulate a fault."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    code = f"{inject}\nimport sys\nfrom lal.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=timeout)


def assert_clear_error(result: subprocess.CompletedProcess, exit_code: int, *phrases: str) -> str:
    """Exit code, no traceback, and a last line that starts with the program's error and says ``phrases``."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == exit_code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    message = lines[-1]
    assert message.startswith(("error:", "lal ")), message
    if exit_code == 1:  # our own errors are one line; argparse's (exit 2) come after the usage
        assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase.lower() in message.lower(), (phrase, message)
    return message


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "mine.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, text_file) -> Path:
    """One finished tiny run (20 steps) that the cases below try to damage."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = lal("train", "--text", str(text_file), "--out", str(out), "--max-steps", "20", *TINY_RUN)
    assert result.returncode == 0, result.stderr
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- lal train


def test_an_earlier_run_is_never_replaced_silently(run_dir, text_file):
    before = snapshot(run_dir)
    result = lal("train", "--text", str(text_file), "--out", str(run_dir), "--max-steps", "10", *TINY_RUN)
    assert_clear_error(result, 1, "already holds a run", "--resume", "--overwrite")
    assert snapshot(run_dir) == before


def test_overwrite_replaces_the_run_on_request(tmp_path, run_dir, text_file):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in snapshot(run_dir).items():
        (copy / name).write_bytes(data)
    result = lal("train", "--text", str(text_file), "--out", str(copy), "--max-steps", "10", "--overwrite", *TINY_RUN)
    assert result.returncode == 0, result.stderr
    assert "Done after 10 steps" in result.stdout


def test_out_that_is_a_file(tmp_path, text_file):
    target = tmp_path / "notes.txt"
    target.write_text("keep me", encoding="utf-8")
    result = lal("train", "--text", str(text_file), "--out", str(target), "--max-steps", "5", *TINY_RUN)
    assert_clear_error(result, 1, "is a file", "--out")
    assert target.read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize(("flag", "value"), [("--target-val-loss", "nan"), ("--lr", "inf"), ("--lr", "-inf")])
def test_non_finite_numbers_are_refused(tmp_path, text_file, flag, value):
    result = lal("train", "--text", str(text_file), "--out", str(tmp_path / "r"), f"{flag}={value}", *TINY_RUN)
    assert_clear_error(result, 2, flag, "finite number")
    assert not (tmp_path / "r").exists()


def test_resume_refuses_settings_the_checkpoint_fixes(run_dir, text_file):
    before = snapshot(run_dir)
    result = lal("train", "--text", str(text_file), "--out", str(run_dir), "--resume", "--tokenizer", "bpe",
                 "--preset", "char-small", "--max-steps", "30", "--device", "cpu", "--quiet")
    message = assert_clear_error(result, 1, "--tokenizer bpe", "--preset char-small", "--resume")
    assert "(the run uses char)" in message
    assert snapshot(run_dir) == before


def test_resume_and_overwrite_together(run_dir, text_file):
    result = lal("train", "--text", str(text_file), "--out", str(run_dir), "--resume", "--overwrite", *TINY_RUN)
    assert_clear_error(result, 1, "choose one")


def test_a_text_too_short_names_the_validation_split(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("nine char", encoding="utf-8")
    result = lal("train", "--text", str(short), "--out", str(tmp_path / "r"), "--max-steps", "5", *TINY_RUN)
    assert_clear_error(result, 1, "validation split", "longer text", "--block-size")


def test_read_only_disk(tmp_path, text_file):
    inject = (
        "import errno, pathlib\n"
        "def refuse(self, *a, **k): raise OSError(errno.EROFS, 'Read-only file system', str(self))\n"
        "pathlib.Path.mkdir = refuse"
    )
    result = lal("train", "--text", str(text_file), "--out", str(tmp_path / "r"), "--max-steps", "5", *TINY_RUN,
                 inject=inject)
    assert_clear_error(result, 1, "read-only", "writable disk", str(tmp_path / "r"))


def test_full_disk_names_the_space_needed_and_keeps_earlier_checkpoints(tmp_path, run_dir, text_file):
    run = tmp_path / "run"
    run.mkdir()
    for name, data in snapshot(run_dir).items():
        (run / name).write_bytes(data)
    checkpoints_before = {name: (run / name).read_bytes() for name in ("best.pt", "last.pt")}
    inject = (
        "import torch\n"
        "def full(*a, **k): raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0')\n"
        "torch.save = full"
    )
    result = lal("train", "--text", str(text_file), "--out", str(run), "--resume", "--max-steps", "30",
                 *RESUME_RUN, inject=inject)
    message = assert_clear_error(result, 1, "disk is full", "MB", "intact", "--resume")
    assert "enforce fail" not in message
    assert {name: (run / name).read_bytes() for name in ("best.pt", "last.pt")} == checkpoints_before
    assert not list(run.glob(".*.tmp"))


def test_stale_temporary_files_of_a_killed_run_are_cleaned(tmp_path, run_dir, text_file):
    run = tmp_path / "run"
    run.mkdir()
    for name, data in snapshot(run_dir).items():
        (run / name).write_bytes(data)
    stale = run / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    result = lal("train", "--text", str(text_file), "--out", str(run), "--resume", "--max-steps", "30",
                 *RESUME_RUN)
    assert result.returncode == 0, result.stderr
    assert not stale.exists()


# --------------------------------------------------------------------------- checkpoints, generate, chat


def test_random_bytes_are_not_called_a_pickle(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes((index * 7919 + 13) % 256 for index in range(4096)))
    message = assert_clear_error(lal("generate", "--ckpt", str(noise)), 1, "is not a checkpoint")
    assert "run code" not in message and "pickle" not in message


def test_ctrl_c_in_generate_says_nothing_about_training(run_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # A shell starts background jobs with SIGINT ignored, and children inherit that; a terminal's
    # Ctrl-C reaches a program whose SIGINT is the default, so give the child that default.
    process = subprocess.Popen(
        [sys.executable, "-m", "lal", "generate", "--ckpt", str(run_dir), "--max-new-tokens", "100000",
         "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if os.name == "posix" else None,
    )
    assert process.stdout is not None
    process.stdout.read(20)  # generation is under way
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert stderr.strip() == "Interrupted."


def test_an_unknown_character_in_chat_keeps_the_session(run_dir):
    result = lal("chat", "--ckpt", str(run_dir), "--max-new-tokens", "5", "--seed", "1", "--device", "cpu",
                 stdin="why 😀?\nTo be\n\n")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.count("model>") == 2  # the second message was answered too
    assert "not sent" in result.stdout


# --------------------------------------------------------------------------- lal corpus


def test_corpus_does_not_follow_links_out_of_the_folder(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0", encoding="utf-8")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "fortunes").write_text("A fortune without a suffix.\n%\n", encoding="utf-8")
    (notes / "passwd.txt").symlink_to(secret)
    out = tmp_path / "corpus.txt"
    result = lal("corpus", "--file", str(notes), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_text(encoding="utf-8") == "A fortune without a suffix.\n%\n"
    assert "not followed" in result.stdout


def test_corpus_skips_binary_bodies_huge_pages_and_names_a_refused_connection(tmp_path):
    server = LocalServer({
        "/robots.txt": (404, "text/plain", b""),
        "/page": (200, "", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4),
        "/big.html": (200, "text/html", b"<p>" + b"word " * 400_000 + b"</p>"),
        "/ok.txt": (200, "text/plain", b"Plain words."),
    })
    dead = LocalServer({})
    dead_url = dead.url("/gone.html")
    dead.close()
    try:
        out = tmp_path / "corpus.txt"
        result = lal("corpus", "--url", server.url("/page"), "--url", server.url("/big.html"), "--url",
                     server.url("/ok.txt"), "--url", dead_url, "--out", str(out), "--delay", "0",
                     "--max-page-mb", "1")
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert out.read_text(encoding="utf-8") == "Plain words.\n"
    assert "binary data" in result.stdout
    assert "larger than 1 MB" in result.stdout
    assert "connection refused" in result.stdout and "robots" not in result.stdout.split(dead_url)[-1]


def test_corpus_deadline_stops_a_trickling_server(tmp_path):
    server = LocalServer({"/robots.txt": (404, "text/plain", b""), "/slow.txt": (200, "text/plain", b"x")},
                         delay_s=3.0)
    try:
        started = time.monotonic()
        result = lal("corpus", "--url", server.url("/slow.txt"), "--out", str(tmp_path / "c.txt"), "--delay", "0",
                     "--deadline", "1", "--timeout", "10")
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert_clear_error(result, 1, "would be empty")
    assert elapsed < 30


def test_nan_loss_stops_with_advice_that_fits_the_settings(tmp_path, text_file):
    inject = (
        "import lal.model as model\n"
        "plain = model.GPT.forward\n"
        "def poisoned(self, *a, **k):\n"
        "    logits, loss = plain(self, *a, **k)\n"
        "    return logits, None if loss is None else loss * float('nan')\n"
        "model.GPT.forward = poisoned"
    )
    result = lal("train", "--text", str(text_file), "--out", str(tmp_path / "r"), "--max-steps", "20", *TINY_RUN,
                 inject=inject)
    message = assert_clear_error(result, 1, "NaN or infinite", "lower learning rate")
    assert "grad_clip=1.0" not in message  # clipping at 1.0 is already the default: not advice


def test_a_damaged_cached_dataset_is_not_called_a_network_failure(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tinyshakespeare.txt").write_text("damaged", encoding="utf-8")
    inject = (  # the download goes to a closed port: the same answer as a machine offline
        "import os, dataclasses, lal.data as data\n"
        "os.environ.pop('LAL_DATA_DIR', None); os.environ['LAL_CACHE_DIR'] = " + repr(str(cache)) + "\n"
        "data.DATASETS['tinyshakespeare'] = dataclasses.replace(data.DATASETS['tinyshakespeare'], "
        "url='http://127.0.0.1:9/tinyshakespeare.txt')"
    )
    result = lal("train", "--dataset", "tinyshakespeare", "--out", str(tmp_path / "r"), "--max-steps", "5",
                 *TINY_RUN, inject=inject)
    assert_clear_error(result, 1, "cached copy", "does not match the SHA-256")
    assert (cache / "tinyshakespeare.txt").read_text(encoding="utf-8") == "damaged"
