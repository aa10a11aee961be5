"""The ``lal`` command line end to end: train a few steps, resume, generate, build a corpus, bench."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lal.sft
import lal.train
from lal.checkpoint import load_checkpoint
from lal.cli import main

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 60


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "mine.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _train(text_file: Path, out: Path, *extra: str) -> int:
    return main(
        ["train", "--text", str(text_file), "--tokenizer", "char", "--preset", "char-tiny", "--out", str(out),
         "--block-size", "32", "--batch-size", "8", "--eval-interval", "10", "--device", "cpu", "--seed", "3",
         "--quiet", *extra]
    )


def test_train_then_generate(text_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert _train(text_file, out, "--max-steps", "30") == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["step"] for row in rows] == [0, 10, 20, 30]  # step 0: the untrained baseline
    for row in rows:
        assert {"step", "elapsed_s", "tokens", "train_loss", "val_loss"} <= set(row)
    assert rows[-1]["tokens"] == 30 * 8 * 32
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert (out / "best.pt").exists() and (out / "last.pt").exists()

    capsys.readouterr()
    assert main(["generate", "--ckpt", str(out), "--prompt", "To be", "--max-new-tokens", "25", "--seed", "1",
                 "--device", "cpu"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("To be") and len(first.rstrip("\n")) >= len("To be") + 20
    main(["generate", "--ckpt", str(out), "--prompt", "To be", "--max-new-tokens", "25", "--seed", "1", "--device", "cpu"])
    assert capsys.readouterr().out == first  # the same seed gives the same text


def test_resume_continues_an_interrupted_run(text_file: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Bit for bit: with dropout, the resumed run must also restore torch's random state."""
    # One thread count for all three runs: lal follows other programs' CPU use by changing torch's
    # thread count as it trains (lal/_cpu_load.py), which changes float rounding; OMP_NUM_THREADS pins it.
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(text_file, straight, "--max-steps", "20", "--dropout", "0.1") == 0

    uninterrupted_train = lal.train.train

    def train_interrupted_at_step_10(*args, callbacks=(), **kwargs):
        def press_ctrl_c(event) -> None:
            if event.step == 10:
                raise KeyboardInterrupt
        return uninterrupted_train(*args, callbacks=[*callbacks, press_ctrl_c], **kwargs)

    monkeypatch.setattr(lal.train, "train", train_interrupted_at_step_10)
    assert _train(text_file, resumed, "--max-steps", "20", "--dropout", "0.1") == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(lal.train, "train", uninterrupted_train)
    assert _train(text_file, resumed, "--max-steps", "20", "--dropout", "0.1", "--resume") == 0
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a.config.dropout == b.config.dropout == 0.1
    torch.testing.assert_close(b.model.state_dict(), a.model.state_dict(), rtol=0, atol=0)
    rows = [(tmp / "metrics.jsonl").read_text(encoding="utf-8") for tmp in (straight, resumed)]
    strip = [[{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in r.splitlines()] for r in rows]
    assert strip[0] == strip[1]


def test_target_val_loss_stops_early(text_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "target"
    assert _train(text_file, out, "--max-steps", "200", "--target-val-loss", "3.5") == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[-1]["val_loss"] <= 3.5 and rows[-1]["step"] < 200
    assert all(row["val_loss"] > 3.5 for row in rows[:-1])


def test_bad_input_is_one_clear_line(tmp_path: Path, capsys) -> None:
    assert main(["train", "--text", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")]) == 1
    assert "No text file" in capsys.readouterr().err
    assert main(["generate", "--ckpt", str(tmp_path / "nowhere")]) == 1
    assert "error:" in capsys.readouterr().err


def test_corpus_from_files(tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("First note.", encoding="utf-8")
    (notes / "b.html").write_text(
        "<html><body><nav>Menu</nav><main><p>Second note.</p></main><script>x=1</script></body></html>",
        encoding="utf-8",
    )
    out = tmp_path / "corpus.txt"
    assert main(["corpus", "--file", str(notes), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "First note." in text and "Second note." in text
    assert "Menu" not in text and "x=1" not in text


def test_bench_reports_positive_figures(capsys) -> None:
    assert main(["bench", "--preset", "char-tiny", "--steps", "2", "--batch-size", "4", "--block-size", "32",
                 "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1 and result["peak_memory_mb"] > 0
    assert result["n_params"] > 0 and result["block_size"] == 32


def test_help_works_as_a_module() -> None:
    completed = subprocess.run([sys.executable, "-m", "lal", "train", "--help"], capture_output=True, text=True)
    assert completed.returncode == 0
    assert "--target-val-loss" in completed.stdout and "--resume" in completed.stdout


def test_corpus_from_web_pages_respects_robots(tmp_path: Path, capsys) -> None:
    from test_corpus import site_with

    site = site_with((200, "text/plain", b"User-agent: *\nDisallow: /private/\n"))
    try:
        out = tmp_path / "web.txt"
        assert main(["corpus", "--url", site.url("/page.html"), "--url", site.url("/private/secret.html"),
                     "--out", str(out), "--delay", "0"]) == 0
    finally:
        site.close()
    text = out.read_text(encoding="utf-8")
    assert "rich and strange" in text and "SECRET" not in text
    assert "/private/secret.html" not in site.paths  # robots.txt said no: never requested
    assert "robots.txt" in capsys.readouterr().out


def test_sft_on_a_vocabulary_without_the_instructions_characters_says_what_to_do(
    text_file: Path, tmp_path: Path, capsys
) -> None:
    assert _train(text_file, tmp_path / "mine", "--max-steps", "2") == 0
    assert main(["sft", "--ckpt", str(tmp_path / "mine"), "--out", str(tmp_path / "chat"), "--text", str(text_file),
                 "--steps", "2", "--device", "cpu", "--quiet"]) == 1
    assert "give --data a JSONL file" in capsys.readouterr().err


def _greedy_reply(checkpoint, prompt: str, max_new_tokens: int) -> str:
    """The greedy answer computed step by step with the model's logits, independently of lal.sample."""
    from lal.sft import encode_prompt

    ids = encode_prompt(checkpoint.tokenizer, prompt)
    end = checkpoint.tokenizer.special_tokens["<|end|>"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = checkpoint.model(torch.tensor([ids + new]))  # (1, T, V)
            next_id = int(logits[0, -1].argmax())
            if next_id == end:
                break
            new.append(next_id)
    return checkpoint.tokenizer.decode(new)


def test_sft_eval_then_chat(tmp_path: Path, capsys, monkeypatch) -> None:
    pretrained, chat = tmp_path / "pretrained", tmp_path / "chat"
    assert main(["train", "--dataset", "tinyshakespeare", "--preset", "char-tiny", "--out", str(pretrained),
                 "--max-steps", "10", "--batch-size", "8", "--eval-interval", "10", "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    sft = ["sft", "--ckpt", str(pretrained), "--out", str(chat), "--steps", "6", "--batch-size", "4", "--device",
           "cpu", "--quiet"]
    assert main(sft) == 0
    report = capsys.readouterr().out
    assert report.startswith("Before fine-tuning:") and "task          before   after total" in report
    assert "Pretraining validation loss" in report
    tuned = load_checkpoint(chat)  # a fine-tuned model, loadable on its own
    before = load_checkpoint(pretrained / "last.pt").model.state_dict()["transformer.wte.weight"]
    assert not torch.equal(before, tuned.model.state_dict()["transformer.wte.weight"])  # it was trained
    assert [json.loads(line)["step"] for line in (chat / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3, 4, 5, 6]

    # lal eval scores the held-out file with the same harness: the same accuracy sft saved
    heldout = Path(__file__).resolve().parent.parent / "data" / "sft" / "instructions_heldout.jsonl"
    reports = []  # scoring answers all 320 prompts greedily: `--json` prints the report the first `lal eval` made
    score = lal.sft.evaluate_checkpoint

    def score_once(*args, **kwargs):
        if not reports:
            reports.append(score(*args, **kwargs))
        return reports[0]

    monkeypatch.setattr(lal.sft, "evaluate_checkpoint", score_once)
    assert main(["eval", "--ckpt", str(chat), "--data", str(heldout), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    n_lines = len(heldout.read_text(encoding="utf-8").splitlines())
    correct = round(tuned.extra["heldout_accuracy"] * n_lines)
    assert lines[-1] == f"accuracy: {correct / n_lines:.3f} ({correct}/{n_lines})"
    assert lines[0].split() == ["task", "correct", "total", "accuracy"]
    assert main(["eval", "--ckpt", str(chat), "--data", str(heldout), "--device", "cpu", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert (scores["correct"], scores["total"]) == (correct, n_lines) and len(scores["tasks"]) == 8
    assert len(reports) == 1
    monkeypatch.undo()

    # a second run into the same folder is refused: the first one is kept
    assert main(sft) == 1
    assert "already holds a run" in capsys.readouterr().err and load_checkpoint(chat).extra == tuned.extra

    expected = _greedy_reply(tuned, "Reverse: to be", max_new_tokens=8)
    assert main(["chat", "--ckpt", str(chat), "--prompt", "Reverse: to be", "--max-new-tokens", "8",
                 "--temperature", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == f"model> {expected}\n"


def test_interrupted_sft_names_the_command_that_resumes_it(tmp_path: Path, capsys, monkeypatch) -> None:
    import lal.sft

    out = tmp_path / "chat"

    def interrupted(ckpt, out_dir, **settings):
        Path(out_dir).mkdir()
        (Path(out_dir) / "last.pt").write_bytes(b"saved at the last evaluation")
        raise KeyboardInterrupt

    monkeypatch.setattr(lal.sft, "finetune_from_checkpoint", interrupted)
    assert main(["sft", "--ckpt", "base", "--out", str(out), "--steps", "900", "--lr", "0.001", "--quiet"]) == 130
    err = capsys.readouterr().err
    assert f"{out / 'last.pt'} keeps the run" in err
    assert err.strip().endswith(f"lal sft --ckpt base --out {out} --steps 900 --lr 0.001 --resume")


def test_sft_rejects_instruction_files_with_null_fields(tmp_path: Path, capsys) -> None:
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "Repeat: a", "response": "a"}\n{"prompt": "Repeat: b", "response": null}\n',
                    encoding="utf-8")
    assert main(["eval", "--ckpt", str(tmp_path / "nowhere"), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert f'{data}, line 2: "response" must be a string, got null' in err and "Traceback" not in err
