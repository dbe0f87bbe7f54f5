"""llama.cpp as the CPU peer: install llama-cpp-python, convert a Hugging Face Llama folder to GGUF, run it.

    python benchmarks/llamacpp_peer.py setup [--model DIR] [--install]   # prints the cached GGUF path

Nothing of llama.cpp is committed. `setup --install` runs `pip install llama-cpp-python[server]`
(it compiles llama.cpp from the package's source: about 8 minutes on 2 cores). The converter is the
`convert_hf_to_gguf.py` (with its `gguf` writer) that the same source package carries: setup fetches
that source package with pip (`pip download --no-binary`), unpacks only the converter, and writes
`<cache>/<model>-<hash>-f32.gguf`, full precision (bf16 weights widen to f32 exactly).
The cache is $FASTCODELLAMA_CACHE/gguf, else ~/.cache/fastcodellama/gguf.

Prompts are fed to llama.cpp as our tokenizer's token ids, so that every system sees the same ids;
`token_agreement` reports whether llama.cpp's own tokenizer (the one `llama_cpp.server` uses) agrees.

Runners:
  LlamaCppBatched      - the llama.cpp C API through ctypes, like llama.cpp's `batched` example: one
                         prefill per prompt, its KV copied to each sample's sequence, then one decode
                         call per step for all sequences; llama.cpp's own sampler chain.
  LlamaCppPromptLookup - `llama_cpp.Llama` with `LlamaPromptLookupDecoding` as draft model: one
                         sequence at a time (the package's speculative path has no batch).
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

PACKAGE = "llama-cpp-python"


def cache_dir() -> str:
    root = os.environ.get("FASTCODELLAMA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastcodellama")
    return os.path.join(root, "gguf")


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str | None:
    try:
        from importlib.metadata import version as v

        return v(PACKAGE)
    except Exception:
        return None


def install() -> None:
    """pip install llama-cpp-python[server] (a source build: minutes)."""
    env = dict(os.environ)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
    subprocess.run([sys.executable, "-m", "pip", "install", f"{PACKAGE}[server]"], check=True, env=env)


# ---------------------------------------------------------------------- conversion


def _model_key(model_dir: str) -> str:
    """Content of config.json and tokenizer files, size and mtime of the weights: cheap for 7B too."""
    h = hashlib.sha256(b"conversion 2: add_prefix_space from tokenizer.model")
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            continue
        h.update(name.encode())
        if name.endswith((".json", ".model")):
            with open(path, "rb") as f:
                h.update(f.read())
        else:
            st = os.stat(path)
            h.update(f"{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def gguf_path(model_dir: str, outtype: str = "f32") -> str:
    name = os.path.basename(os.path.normpath(model_dir))
    return os.path.join(cache_dir(), f"{name}-{_model_key(model_dir)}-{outtype}.gguf")


def converter_dir() -> str:
    """llama.cpp's convert_hf_to_gguf.py, its `conversion` package and gguf-py, unpacked from the
    llama-cpp-python source package of the installed version (fetched with pip, then cached)."""
    ver = version()
    if ver is None:
        raise RuntimeError(f"{PACKAGE} is not installed: run `python benchmarks/llamacpp_peer.py setup --install`")
    target = os.path.join(cache_dir(), f"converter-{ver}")
    if os.path.isfile(os.path.join(target, "convert_hf_to_gguf.py")):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"{PACKAGE}=={ver}", "-d", tmp], check=True, stdout=subprocess.DEVNULL)
        (sdist,) = glob.glob(os.path.join(tmp, "*.tar.gz"))
        staging = os.path.join(tmp, "x")
        with tarfile.open(sdist) as tar:
            wanted = [m for m in tar.getmembers() if _converter_member(m.name)]
            tar.extractall(staging, members=wanted, filter="data")
        (root,) = glob.glob(os.path.join(staging, "*", "vendor", "llama.cpp"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(root, target)
    return target


def _converter_member(name: str) -> bool:
    parts = name.split("/")
    if len(parts) < 4 or parts[1:3] != ["vendor", "llama.cpp"]:
        return False
    return parts[3] in ("convert_hf_to_gguf.py", "conversion", "gguf-py")


def convert(model_dir: str, outtype: str = "f32", force: bool = False) -> str:
    """The GGUF of `model_dir` at `outtype` (f32: full precision), converted once and cached."""
    out = gguf_path(model_dir, outtype)
    if os.path.isfile(out) and not force:
        return out
    conv = converter_dir()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(conv, "gguf-py"),
                                                                   os.environ.get("PYTHONPATH")])))
    tmp = out + ".partial"
    with tempfile.TemporaryDirectory() as staging:
        src = _stage_with_prefix_space(model_dir, os.path.join(staging, os.path.basename(os.path.normpath(model_dir))))
        proc = subprocess.run([sys.executable, os.path.join(conv, "convert_hf_to_gguf.py"), src,
                               "--outtype", outtype, "--outfile", tmp], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    os.replace(tmp, out)
    return out


def _stage_with_prefix_space(model_dir: str, staging: str) -> str:
    """The model folder as symlinks, with tokenizer_config.json stating `add_prefix_space`.

    llama.cpp's sentencepiece tokenizer prepends a space unless the GGUF says not to, and the
    converter takes that flag from tokenizer_config.json only; a sentencepiece model trained with
    add_dummy_prefix=False (the embedded model's) would otherwise get other ids for every prompt."""
    os.makedirs(staging)
    for name in os.listdir(model_dir):
        os.symlink(os.path.abspath(os.path.join(model_dir, name)), os.path.join(staging, name))
    spm = os.path.join(model_dir, "tokenizer.model")
    if not os.path.isfile(spm):
        return staging
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(spm, "rb") as f:
        proto.ParseFromString(f.read())
    cfg_path = os.path.join(staging, "tokenizer_config.json")
    cfg = {}
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
        os.remove(cfg_path)
    cfg.setdefault("add_prefix_space", bool(proto.normalizer_spec.add_dummy_prefix))
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=1)
    return staging


# ---------------------------------------------------------------------- the C API


def _lib():
    import llama_cpp

    return llama_cpp


_QUIET_LOG = None  # the ctypes callback must outlive every llama.cpp call


def _init_backend() -> None:
    global _QUIET_LOG
    if _QUIET_LOG is None:
        lc = _lib()
        lc.llama_backend_init()
        _QUIET_LOG = lc.llama_log_callback(lambda level, text, user_data: None)
        lc.llama_log_set(_QUIET_LOG, ctypes.c_void_p(0))  # llama.cpp logs every context creation


def threads() -> int:
    return os.cpu_count() or 1


@dataclass
class RunStats:
    tokens: int = 0
    forwards: int = 0  # decode calls after the prefill (batched: one per step for all sequences)
    seq_forwards: int = 0  # forwards summed per sequence (tokens / this = tokens per forward per sequence)
    accepted_hist: dict[int, int] = field(default_factory=dict)  # draft tokens accepted per verify forward


class LlamaCppBatched:
    """Plain decoding of many sequences in one llama_decode per step (the C API, no Python-side model)."""

    def __init__(self, gguf: str, max_seqs: int, max_len: int, n_threads: int | None = None) -> None:
        lc = _lib()
        _init_backend()
        self.lc = lc
        mparams = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(gguf.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.max_seqs, self.max_len = max_seqs, max_len
        cparams = lc.llama_context_default_params()
        cparams.n_seq_max = max_seqs
        cparams.kv_unified = False  # a KV stream per sequence: attention never scans other samples' cells
        cparams.n_ctx = max_seqs * _round_up(max_len, 256)
        cparams.n_batch = cparams.n_ubatch = max(512, max_seqs, max_len)
        cparams.n_threads = cparams.n_threads_batch = n_threads or threads()
        cparams.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(max(cparams.n_batch, max_len), 0, 1)

    def close(self) -> None:
        lc = self.lc
        if getattr(self, "ctx", None):
            lc.llama_batch_free(self.batch)
            lc.llama_free(self.ctx)
            lc.llama_model_free(self.model)
            self.ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _decode(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        """items: (token, position, seq_id, wants_logits)."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(items)
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _sampler(self, temperature: float, top_p: float, seed: int):
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if temperature == 0.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            if top_p < 1.0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def generate(self, prompts: Sequence[Sequence[int]], samples: int, max_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 stats: RunStats | None = None) -> list[list[int]]:
        """`samples` continuations of exactly `max_tokens` tokens per prompt (EOS does not stop them),
        prompt-major order. Prompts go in groups of at most max_seqs sequences."""
        per_group = max(1, self.max_seqs // samples)
        outs: list[list[int]] = []
        for g in range(0, len(prompts), per_group):
            outs += self._group(prompts[g:g + per_group], samples, max_tokens, temperature, top_p, seed + g, stats)
        return outs

    def _group(self, prompts, samples, max_tokens, temperature, top_p, seed, stats) -> list[list[int]]:
        lc = self.lc
        if len(prompts) * samples > self.max_seqs or any(len(p) + max_tokens > self.max_len for p in prompts):
            raise ValueError("the group does not fit the context this runner was made for")
        lc.llama_memory_clear(self.mem, True)
        sampler = self._sampler(temperature, top_p, seed)
        try:
            seqs, outs = [], []  # seqs[i] = (seq_id, next position, logits row of its last token)
            for p, prompt in enumerate(prompts):
                first = p * samples
                self._decode([(t, i, first, i == len(prompt) - 1) for i, t in enumerate(prompt)])
                for s in range(1, samples):  # the prompt's KV, copied to the other samples' streams
                    lc.llama_memory_seq_cp(self.mem, first, first + s, -1, -1)
                for s in range(samples):
                    outs.append([lc.llama_sampler_sample(sampler, self.ctx, -1)])
                    seqs.append((first + s, len(prompt)))
            for step in range(1, max_tokens):
                self._decode([(outs[i][-1], pos + step - 1, seq, True) for i, (seq, pos) in enumerate(seqs)])
                for i in range(len(seqs)):
                    outs[i].append(lc.llama_sampler_sample(sampler, self.ctx, i))
            if stats is not None:
                stats.tokens += len(outs) * max_tokens
                stats.forwards += max_tokens - 1
                stats.seq_forwards += len(outs) * max_tokens
            return outs
        finally:
            lc.llama_sampler_free(sampler)


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


class LlamaCppPromptLookup:
    """llama-cpp-python's high-level Llama with its prompt-lookup draft model, one sequence at a time."""

    def __init__(self, gguf: str, max_len: int, num_pred_tokens: int = 10, max_ngram_size: int = 2,
                 n_threads: int | None = None, draft: bool = True) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        _init_backend()
        self.drafter = _CountingDrafter(LlamaPromptLookupDecoding(max_ngram_size, num_pred_tokens)) if draft else None
        self.llm = Llama(gguf, n_ctx=_round_up(max_len, 256), n_threads=n_threads or threads(),
                         n_threads_batch=n_threads or threads(), draft_model=self.drafter, verbose=False)

    def generate_one(self, prompt: Sequence[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int = 0, stats: RunStats | None = None) -> list[int]:
        """Exactly `max_tokens` tokens (EOS does not stop it)."""
        self.llm.set_seed(seed)
        if self.drafter is not None:
            self.drafter.start()
        out: list[int] = []
        gen = self.llm.generate(list(prompt), temp=temperature, top_p=top_p, top_k=0, min_p=0.0,
                                repeat_penalty=1.0, reset=True)
        for tok in gen:
            out.append(int(tok))
            if len(out) == max_tokens:
                break
        gen.close()
        if stats is not None:
            stats.tokens += len(out)
            if self.drafter is not None:
                forwards, hist = self.drafter.finish(len(prompt) + len(out))
                stats.forwards += forwards
                stats.seq_forwards += forwards
                for k, v in hist.items():
                    stats.accepted_hist[k] = stats.accepted_hist.get(k, 0) + v
            else:
                stats.forwards += len(out) - 1
                stats.seq_forwards += len(out) - 1
        return out


class _CountingDrafter:
    """Wraps the draft model to see each verify forward: the draft offered and how far the sequence
    grew by the next call (tokens that forward produced = accepted draft tokens + 1)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[tuple[int, int]] = []  # (tokens known at the call, draft length)

    def start(self) -> None:
        self.calls = []

    def __call__(self, input_ids, /, **kwargs):
        draft = self.inner(input_ids, **kwargs)
        self.calls.append((len(input_ids), len(draft)))
        return draft

    def finish(self, final_len: int) -> tuple[int, dict[int, int]]:
        """(decode forwards, histogram of accepted draft tokens per forward that carried a draft)."""
        hist: dict[int, int] = {}
        marks = self.calls + [(final_len, 0)]
        for (n0, drafted), (n1, _) in zip(marks, marks[1:]):
            if drafted:
                acc = max(0, min(drafted, n1 - n0 - 1))
                hist[acc] = hist.get(acc, 0) + 1
        return len(self.calls), hist


# ---------------------------------------------------------------------- tokenizers


def token_agreement(gguf: str, model_dir: str, texts: Sequence[str]) -> dict:
    """Does llama.cpp's tokenizer (from the GGUF) give our tokenizer's ids? Per text, with BOS."""
    from llama_cpp import Llama

    from engine.tokenizer import Tokenizer

    _init_backend()
    ours = Tokenizer(model_dir)
    llm = Llama(gguf, n_ctx=256, vocab_only=True, verbose=False)
    same, first_diff = 0, None
    for text in texts:
        a = ours.encode(text)
        b = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        if a == b:
            same += 1
        elif first_diff is None:
            i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            first_diff = {"text": text[:80], "at": i, "ours": a[max(0, i - 2):i + 4], "llama_cpp": b[max(0, i - 2):i + 4]}
    return {"texts": len(texts), "identical": same, "first_difference": first_diff}


# ---------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="install (with --install), convert to GGUF, check the tokenizer")
    s.add_argument("--model", default=None, help="Hugging Face Llama folder (default: the embedded model)")
    s.add_argument("--install", action="store_true", help=f"pip install {PACKAGE}[server] if it is missing")
    s.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16"])
    s.add_argument("--force", action="store_true", help="convert again even if cached")
    args = ap.parse_args(argv)
    from engine import DEFAULT_MODEL

    model = args.model or DEFAULT_MODEL
    if not available():
        if not args.install:
            print(f"{PACKAGE} is not installed; add --install (a source build, ~8 min on 2 cores)", file=sys.stderr)
            return 1
        install()
    start = time.perf_counter()
    path = convert(model, args.outtype, force=args.force)
    print(json.dumps({"gguf": path, "llama_cpp_python": version(), "seconds": round(time.perf_counter() - start, 1)}))
    from fastcodellama.job.tasks import load_tasks

    texts = [t["prompt"] for t in load_tasks(None, 164)]
    print(json.dumps({"token_agreement_humaneval": token_agreement(path, model, texts)}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
