"""benchmarks/draft_ranking.py: the rankings a drafting engine asks for are kept, and each size's
row times both paths on the same candidates, whose answers agree."""
from __future__ import annotations

import json

import draft_ranking


def test_both_paths_rank_the_kept_searches_alike_at_every_size(tmp_path):
    results = draft_ranking.main(["--batch", "20", "--steps", "40", "--repeats", "1", "--out", str(tmp_path)])
    assert results["calls"] > 0
    assert [r["candidates"] for r in results["rows"]] == [16, 20]
    assert all(r["equal"] and r["python_ms"] > 0 and r["numpy_ms"] > 0 for r in results["rows"])
    written = json.loads(next(p for p in tmp_path.iterdir() if p.suffix == ".json").read_text())
    assert written["numpy_from"] == results["numpy_from"]
