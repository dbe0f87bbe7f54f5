"""benchmarks/constrained_decoding.py: plain, JSON-mode and JSON-schema sampling timed in turn."""
from __future__ import annotations

import json

import constrained_decoding


def test_the_three_modes_are_timed_and_written(tmp_path):
    results = constrained_decoding.main(["--rounds", "1", "--samples", "1", "--max-tokens", "8",
                                         "--out", str(tmp_path)])
    assert set(results["median"]) == {"plain", "json_object", "json_schema"}
    assert all(len(v) == 1 and v[0] > 0 for v in results["seconds_per_1k_tokens"].values())
    written = json.loads(next(tmp_path.glob("constrained_decoding_*.json")).read_text())
    assert written["median"] == results["median"]
    assert "| json_schema |" in next(tmp_path.glob("constrained_decoding_*.md")).read_text()
