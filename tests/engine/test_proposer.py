"""The seam between the engine and a proposer: the step's queries as the engine hands them over."""
from __future__ import annotations

from engine.proposer import DraftQueries, DraftQuery


def test_queries_give_their_ids_at_once_and_each_max_len_once_when_read() -> None:
    calls: list[int] = []

    def max_len(i: int) -> int:
        calls.append(i)
        return 10 * i

    queries = DraftQueries([7, 8, 9], max_len)
    assert len(queries) == 3 and queries.seq_ids == [7, 8, 9] and calls == []
    assert queries[1] == DraftQuery(8, 10) and queries[-1] == DraftQuery(9, 20)
    assert queries.max_len(1) == 10 and calls == [1, 2]  # read once
    assert list(queries) == [DraftQuery(7, 0), DraftQuery(8, 10), DraftQuery(9, 20)]
    assert queries[1:] == [DraftQuery(8, 10), DraftQuery(9, 20)] and sorted(calls) == [0, 1, 2]


def test_a_list_of_queries_reads_as_the_engines() -> None:
    listed = [DraftQuery(3, 5), DraftQuery(1, 0)]
    queries = DraftQueries.of(listed)
    assert queries.seq_ids == [3, 1] and list(queries) == listed
    assert DraftQueries.of(queries) is queries
