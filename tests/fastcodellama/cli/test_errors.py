"""The mistakes people make end in one line on stderr and a non-zero exit, never a traceback, and
the cheap ones before anything loads (each run here is a fresh `python -m fastcodellama`)."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

PHASE = re.compile(r"^.+ \.\.\. (\d+\.\d s|stopped)$")  # a start-up phase line (fastcodellama/progress.py)


def cli(*args: str, cwd: str | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """`python -m fastcodellama ARGS`; `prelude` runs first in the same interpreter."""
    code = f"{prelude}\nimport sys\nfrom fastcodellama.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


# Says at exit whether torch was ever imported (on stdout, beside the error on stderr).
NOTES_TORCH = "import atexit, sys\natexit.register(lambda: print('torch loaded:', 'torch' in sys.modules))"


def one_line_error(done: subprocess.CompletedProcess, code: int = 2, *, after_phases: bool = False) -> str:
    """The error line, checked: exit `code`, no traceback, stderr one line (or start-up phase lines, then one)."""
    lines = done.stderr.splitlines()
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    if after_phases:
        assert all(PHASE.match(line) for line in lines[:-1]), lines
    else:
        assert len(lines) == 1, lines
    return lines[-1]


@pytest.fixture
def model_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                                                  "n_embd": 64, "n_head": 4, "n_layer": 2}))
    return {"missing": str(tmp_path / "nowhere"), "empty": str(empty), "gpt2": str(gpt2)}


def test_version_and_overview():
    from fastcodellama import __version__

    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"fastcodellama {__version__}"
    done = cli("--help")
    assert done.returncode == 0
    for part in ("embedded", "humaneval --limit 20", "from fastcodellama import complete"):
        assert part in done.stdout
    assert "one module per subcommand" not in done.stdout  # the overview, not a docstring


def test_parsing_loads_no_torch():
    code = ("import sys\nfrom fastcodellama.cli.main import build_parser\n"
            "args = build_parser().parse_args(['humaneval', '--passk', '3', '--threads', '1'])\n"
            "assert 'torch' not in sys.modules, 'torch loaded'\nprint(args.passk)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "3", done.stderr


@pytest.mark.parametrize("command", ["humaneval", "generate", "serve"])
def test_help_loads_no_torch(command):
    """--help shows the engine's defaults and choices, read from its configuration, without torch."""
    done = cli(command, "--help", prelude=NOTES_TORCH)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "torch loaded: False"
    text = " ".join(done.stdout.split())  # argparse wraps lines
    assert "auto, torch, cpu, triton (default auto)" in text  # --attention-backend's choices
    assert "auto, float32, float16, bfloat16" in text  # --dtype's
    assert "tokens per KV-cache block (default 16)" in text  # EngineConfig's default


@pytest.mark.parametrize("argv, flag", [
    (["humaneval", "--passk", "0"], "--passk"),
    (["humaneval", "--passk", "-3"], "--passk"),
    (["humaneval", "--limit", "0"], "--limit"),
    (["humaneval", "--max-tokens", "0"], "--max-tokens"),
    (["humaneval", "--temperature", "-0.5"], "--temperature"),
    (["humaneval", "--top_p", "0"], "--top_p"),
    (["humaneval", "--top_p", "1.5"], "--top_p"),
    (["humaneval", "--seed", "-1"], "--seed"),
    (["humaneval", "--workers", "0"], "--workers"),
    (["humaneval", "--timeout", "0"], "--timeout"),
    (["humaneval", "--select", "0"], "--select"),
    (["humaneval", "--threads", "0"], "--threads"),
    (["humaneval", "--block-size", "0"], "--block-size"),
    (["humaneval", "--max-num-seqs", "-1"], "--max-num-seqs"),
    (["humaneval", "--kv-cache-memory-gb", "nan"], "--kv-cache-memory-gb"),
    (["humaneval", "--k", "-1"], "--k"),
    (["humaneval", "--replicas", "0"], "--replicas"),
    (["humaneval", "--device", "gpu"], "--device"),
    (["serve", "--device", "cuda:x"], "--device"),
    (["generate", "x", "--num-samples", "0"], "--num-samples"),
    (["evaluate", "s.jsonl", "--k", "0"], "--k"),
    (["evaluate", "s.jsonl", "--workers", "0"], "--workers"),
    (["select", "s.jsonl", "--submit", "0"], "--submit"),
    (["train", "--output", "o", "--preset", "micro", "--max-steps", "-1"], "--max-steps"),
    (["train", "--output", "o", "--preset", "micro", "--max-steps", "1", "--fim-rate", "2"], "--fim-rate"),
])
def test_values_that_make_no_sense_are_refused_before_anything_loads(argv, flag, tmp_path):
    done = cli(*argv, cwd=str(tmp_path), prelude=NOTES_TORCH)
    line = one_line_error(done)
    assert flag in line and "error" in line
    assert done.stdout.splitlines()[-1] == "torch loaded: False"  # refused before anything loads


def test_model_folder_mistakes(model_folders, tmp_path):
    line = one_line_error(cli("humaneval", "--model_path", model_folders["missing"], cwd=str(tmp_path)))
    assert "does not exist" in line and "--model_path" in line
    line = one_line_error(cli("generate", "def f():", "--model", model_folders["empty"]))
    assert "no config.json" in line
    line = one_line_error(cli("serve", "--model", model_folders["missing"]))
    assert "does not exist" in line


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_asked_for_where_torch_sees_none(tmp_path):
    line = one_line_error(cli("generate", "def f():", "--device", "cuda", "--max-tokens", "2"), after_phases=True)
    assert "device cuda: no GPU is visible to this torch" in line
    line = one_line_error(cli("humaneval", "--device", "cuda:1", "--limit", "1", cwd=str(tmp_path)), after_phases=True)
    assert "device cuda:1" in line and "no GPU" in line


@pytest.mark.slow
def test_an_architecture_the_engine_does_not_run(model_folders, tmp_path):
    line = one_line_error(cli("humaneval", "--model", model_folders["gpt2"], "--limit", "1", cwd=str(tmp_path)),
                          after_phases=True)
    assert "GPT2LMHeadModel" in line and "supported" in line
    line = one_line_error(cli("serve", "--model", model_folders["gpt2"], "--port", "0"), after_phases=True)
    assert "GPT2LMHeadModel" in line


def test_file_mistakes(tmp_path):
    line = one_line_error(cli("humaneval", "--input_data_fn", str(tmp_path / "nope.jsonl"), cwd=str(tmp_path)))
    assert "problems file" in line and "does not exist" in line
    line = one_line_error(cli("humaneval", "--output_data_fn", str(tmp_path / "no" / "s.jsonl"), cwd=str(tmp_path)))
    assert "output folder" in line and "does not exist" in line
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": \n{"task_id": "HumanEval/1"}\n')
    line = one_line_error(cli("humaneval", "--output_data_fn", str(broken), "--limit", "2", cwd=str(tmp_path)))
    assert "corrupt at line 2" in line and "--overwrite" in line
    line = one_line_error(cli("evaluate", str(tmp_path / "nope.jsonl")))
    assert "samples file" in line and "does not exist" in line
    line = one_line_error(cli("select", str(broken), "--problems", str(tmp_path / "nope.jsonl")))
    assert "problems file" in line
    unreadable = tmp_path / "folder.jsonl"
    unreadable.mkdir()
    line = one_line_error(cli("evaluate", str(unreadable)))
    assert "is a folder" in line


def test_plot_without_matplotlib_says_which_extra(tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n')
    done = cli("select", str(samples), "--plot", str(tmp_path / "p.png"),
               prelude="import sys; sys.modules['matplotlib'] = None")  # as if it were not installed
    line = one_line_error(done)
    assert "--plot needs matplotlib" in line and "fastcodellama[bench]" in line


def test_train_mistakes(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"code": "x = 1"}\n{"code": "y = \n{"code": "z"}\n')
    out = tmp_path / "model"
    line = one_line_error(cli("train", "--data", str(data), "--preset", "micro", "--max-steps", "1",
                              "--output", str(out)))
    assert f"{data}:2" in line and "not valid JSON" in line
    assert not out.exists()  # a failed run leaves no folder behind
    line = one_line_error(cli("train", "--init", str(tmp_path / "nowhere"), "--max-steps", "1", "--output", str(out)))
    assert "does not exist" in line and "tokenizer" not in line
    line = one_line_error(cli("train", "--data", str(tmp_path / "none.jsonl"), "--preset", "micro",
                              "--max-steps", "1", "--output", str(out)))
    assert "training data" in line and "does not exist" in line


@pytest.mark.slow
def test_ctrl_c_keeps_the_samples_and_says_how_to_resume(tmp_path):
    out = tmp_path / "samples.jsonl"
    code = "import sys\nfrom fastcodellama.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "humaneval", "--limit", "3", "--passk", "2", "--max-tokens",
                             "2000", "--max-model-len", "2048", "--no-evaluate", "--threads", "1",
                             # no stop string ends a sample early: the job outlasts the signal even on a fast machine
                             "--stop", "@@ never seen @@", "--output_data_fn", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "tokens [" not in seen:  # the bar is up: the model is loaded and sampling
        chunk = proc.stderr.read(1)
        assert chunk, seen
        seen += chunk
    proc.send_signal(signal.SIGINT)
    rest_out, rest_err = proc.communicate(timeout=120)
    err = seen + rest_err
    assert proc.returncode == 130 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    kept = sum(1 for _ in open(out)) if out.exists() else 0
    assert last == f"interrupted: {kept} samples kept in {out}, rerun to resume"

