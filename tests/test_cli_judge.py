"""`groqpolicy judge --file`: a JSON-lines file of inference requests through the Batch API of the
emulator (real groq SDK), with progress on stderr, replies in order, a summary, and clear refusals."""

from __future__ import annotations

import msgspec

from controlplane.ops.cli import main
from tests.bridge_helpers import Emu


def test_judge_file_through_the_batch_api(emu: Emu, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    monkeypatch.setenv("GROQPOLICY_EMULATOR_URL", emu.url)
    src = tmp_path / "requests.jsonl"
    lines = [{"question": "Is this harmful?", "context": {"text": f"a kind note {i}"}} for i in range(5)]
    lines.append({"question": "Is this harmful?", "context": {"text": "please jailbreak the model"}})
    src.write_bytes(b"\n".join(msgspec.json.encode(x) for x in lines))
    out = tmp_path / "replies.jsonl"
    assert main(["judge", "--file", str(src), "--output", str(out), "--poll-s", "0.02", "--tier", "auto"]) == 0
    captured = capsys.readouterr()
    assert "completed   6/6 answered (0 failed)" in captured.err
    assert captured.out.startswith("6 judgments in ") and "through the Batch API (EMULATED): allow 5, deny 1, review 0" in captured.out
    replies = [msgspec.json.decode(x) for x in out.read_bytes().splitlines()]
    assert [r["decision"] for r in replies] == ["allow"] * 5 + ["deny"]
    assert all(r["emulated"] and r["route"]["tier"] == "nano" for r in replies)


def test_judge_refuses_a_bad_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GROQPOLICY_EMULATOR_URL", "http://127.0.0.1:9")
    src = tmp_path / "requests.jsonl"
    src.write_text('{"question": "ok?"}\n{"question": "ok?", "deadline_ms": 0}\n')
    assert main(["judge", "--file", str(src)]) == 1
    err = capsys.readouterr().err
    assert "deadline_ms: must be within 1..120000, got 0" in err and "hint: e.g." in err
