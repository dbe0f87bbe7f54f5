from __future__ import annotations

import json

import pytest

from fastcodellama.training import corpus


def _write(root, rel: str, text: str = "x = 1\n") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_stdlib_files_leave_out_tests_site_packages_and_codec_tables(tmp_path):
    for rel in ("os.py", "json/decoder.py", "test/test_os.py", "unittest/test/test_case.py",
                "lib2to3/tests/data/x.py", "idlelib/idle_test/test_x.py", "idlelib/editor.py",
                "site-packages/pkg/mod.py", "ctypes/tests/t.py", "README.txt", "_sysconfigdata__linux.py"):
        _write(tmp_path, rel)
    _write(tmp_path, "encodings/cp999.py", "decoding_table = (\n    '\\x00'\n)\n")
    assert corpus.stdlib_files(str(tmp_path)) == ["encodings/cp999.py", "idlelib/editor.py", "json/decoder.py", "os.py"]
    train, validation = corpus.stdlib_corpus(str(tmp_path))
    assert len(train) + len(validation) == 3  # the codec table is dropped by its content


def test_split_is_deterministic_disjoint_and_about_two_percent():
    files = corpus.stdlib_files()
    held = [f for f in files if corpus.is_validation(f)]
    assert 0.005 < len(held) / len(files) < 0.05
    assert all(corpus.is_validation(f) for f in held)  # stable, not Python's salted hash()
    train, validation = corpus.stdlib_corpus()
    assert (train, validation) == corpus.stdlib_corpus()
    assert validation and len(train) > 20 * len(validation)
    assert not set(train) & set(validation)
    assert not any("import unittest\nfrom test import support" in t for t in train)


def test_jsonl_round_trip_and_errors(tmp_path):
    docs = ["def f():\n\treturn 'é'\n", "x = 1\n"]
    path = tmp_path / "c.jsonl"
    assert corpus.write_jsonl(str(path), docs) == 2
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"code": d} for d in docs]
    assert corpus.read_jsonl(str(path)) == docs
    path.write_text('{"code": "a"}\n\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=":3:"):
        corpus.read_jsonl(str(path))


def test_write_stdlib_corpus(tmp_path):
    train_path, validation_path = corpus.write_stdlib_corpus(str(tmp_path))
    train, validation = corpus.stdlib_corpus()
    assert corpus.read_jsonl(validation_path) == validation
    assert len(corpus.read_jsonl(train_path)) == len(train)
