"""serve_attacks.py, briefly, against a launched `python -m api` on the tiny model."""
from __future__ import annotations

import json

import pytest
import serve_attacks


@pytest.mark.slow
def test_every_phase_reports_and_the_server_stays_whole(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "attacks.json"
    args = ["--model", tiny_model_dir, "--num-kv-blocks", "48", "--server-arg=--block-size=8", "--seconds", "1.5",
            "--idle-connections", "150", "--slow-headers", "5", "--heavy-requests", "2", "--huge-prompts", "2",
            "--huge-mb", "1", "--kv-requests", "1", "--request-timeout", "15", "--json", str(out)]
    assert serve_attacks.main(args) == 0
    results = {r["phase"]: r for r in json.loads(out.read_text())}
    assert list(results) == ["quiet", "idle", "heavy", "huge", "kv"]
    for r in results.values():
        assert r["served"] >= 1 and r["server_5xx"] == 0, r
        assert r["kv_free_after"] == r["kv_total"] == 48, r
        assert r["rss_before_mb"] and r["rss_after_mb"]
    assert results["idle"]["attacker"]["opened"] >= 150
    assert results["heavy"]["attacker"]["HTTP 400"] >= 1  # n=128 x 2048 tokens
    assert results["huge"]["attacker"]["HTTP 400"] >= 1
    assert "| kv |" in capsys.readouterr().out
