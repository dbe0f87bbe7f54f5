"""What the sandbox's setup finds once per interpreter (the forking interpreter finds it for every check)."""
from __future__ import annotations

import mmap
import os

from fastcodellama.evaluation import sandbox_setup


def test_the_interpreter_trees_follow_what_is_mapped_after_the_first_look(tmp_path) -> None:
    sandbox_setup.warm()
    library = tmp_path / "libmapped_later.so"
    library.write_bytes(b"\0" * mmap.PAGESIZE)
    directory = os.path.realpath(tmp_path)
    assert directory not in sandbox_setup._interpreter_trees()
    with open(library, "rb") as f, mmap.mmap(f.fileno(), mmap.PAGESIZE, prot=mmap.PROT_READ):
        assert directory in sandbox_setup._interpreter_trees()  # a library loaded since: bound in the root too


def test_the_harness_is_compiled_as_python_c_compiles_it() -> None:
    path = os.path.join(os.path.dirname(sandbox_setup.__file__), "harness.py")
    with open(path, encoding="utf-8") as f:
        expected = compile(f.read(), "<string>", "exec")
    code = sandbox_setup.harness_code()
    assert code is sandbox_setup.harness_code()
    assert (code.co_filename, code.co_code, code.co_consts[:3]) == (expected.co_filename, expected.co_code,
                                                                   expected.co_consts[:3])
