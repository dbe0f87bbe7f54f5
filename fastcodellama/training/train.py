"""Trains (or fine-tunes) a small Llama on code, on CPU, in plain PyTorch.

From scratch (`--preset tiny`) it first trains a sentencepiece tokenizer on the corpus; with
`--init DIR` it continues from a Hugging Face checkpoint and keeps that folder's tokenizer.
Examples are files, chunked at line boundaries and packed into fixed-length rows; a share of
chunks is rewritten in CodeLlama's fill-in-the-middle (PSM) form. Checkpoints are Hugging Face
folders (bfloat16 safetensors + tokenizer files + training.json).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

from fastcodellama.training import corpus

# Shapes of the models trained from scratch. `micro` exists for tests only.
PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                 num_attention_heads=4, num_key_value_heads=2),
    "micro": dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1),
}
COMMON_CONFIG = dict(max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5,
                     tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CHARS_PER_TOKEN = 3  # a low estimate for code; sizes chunks so that a FIM example fits in one row
MIN_LR_RATIO = 0.1
# Without --warmup-steps the warm-up ends after AUTO_WARMUP_STEPS steps or AUTO_WARMUP_SHARE of the
# run (by steps or by time), whichever comes first, so that a short run does not spend itself warming up.
AUTO_WARMUP_STEPS = 100
AUTO_WARMUP_SHARE = 0.05


# ---------------------------------------------------------------------------------------------
# Data: documents -> examples (plain or FIM) -> packed rows


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    fim: tuple[int, int, int, int] | None  # <PRE>, <SUF>, <MID>, <EOT>

    @classmethod
    def from_spm(cls, sp) -> "SpecialIds":
        fim = None
        for fmt in ("<{}>", "\u2581<{}>"):  # ours, CodeLlama's
            ids = [sp.piece_to_id(fmt.format(name)) for name in ("PRE", "SUF", "MID", "EOT")]
            if all(i != sp.unk_id() for i in ids):
                fim = tuple(ids)
                break
        return cls(bos=sp.bos_id(), eos=sp.eos_id(), fim=fim)


def split_chunks(text: str, max_chars: int) -> list[str]:
    """Consecutive runs of whole lines of at most `max_chars` (a longer line is a chunk alone)."""
    chunks, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        if current and size + len(line) > max_chars:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        chunks.append("".join(current))
    return chunks


def fim_example(encode, ids: SpecialIds, chunk: str, rng: random.Random) -> list[int]:
    """CodeLlama's PSM: BOS <PRE> prefix <SUF> suffix <MID> middle <EOT>, cut at random characters."""
    pre, suf, mid, eot = ids.fim
    i, j = sorted(rng.randint(0, len(chunk)) for _ in range(2))
    prefix, middle, suffix = chunk[:i], chunk[i:j], chunk[j:]
    return [ids.bos, pre, *encode(prefix), suf, *encode(suffix), mid, *encode(middle), eot]


def document_examples(encode, ids: SpecialIds, text: str, chunk_chars: int, fim_rate: float,
                      rng: random.Random) -> Iterator[list[int]]:
    """A file as BOS + tokens + EOS, chunked at lines; each chunk becomes FIM with prob. fim_rate.

    The tokenizer never puts "\\n" inside a piece, so tokenizing chunks cut after a newline gives
    the same ids as tokenizing the whole file.
    """
    chunks = split_chunks(text, chunk_chars)
    for k, chunk in enumerate(chunks):
        if ids.fim is not None and fim_rate > 0 and rng.random() < fim_rate:
            yield fim_example(encode, ids, chunk, rng)
        else:
            yield ([ids.bos] if k == 0 else []) + encode(chunk) + ([ids.eos] if k == len(chunks) - 1 else [])


def example_stream(encode, ids: SpecialIds, documents: Sequence[str], chunk_chars: int, fim_rate: float,
                   seed: int, epochs: int | None = None) -> Iterator[list[int]]:
    """Examples of all documents in a fresh random order each epoch (forever if epochs is None)."""
    epoch = 0
    while epochs is None or epoch < epochs:
        rng = random.Random(seed * 1_000_003 + epoch)
        order = list(range(len(documents)))
        rng.shuffle(order)
        for d in order:
            yield from document_examples(encode, ids, documents[d], chunk_chars, fim_rate, rng)
        epoch += 1


def packed_rows(examples: Iterator[list[int]], seq_len: int) -> Iterator[list[int]]:
    """Rows of seq_len + 1 tokens from the concatenated examples; consecutive rows overlap by one
    token so that every token but the very first is a target exactly once."""
    buffer: list[int] = []
    for example in examples:
        buffer.extend(example)
        while len(buffer) >= seq_len + 1:
            yield buffer[:seq_len + 1]
            del buffer[:seq_len]


def batches(rows: Iterator[list[int]], batch_size: int):
    import torch

    while True:
        block = [row for _, row in zip(range(batch_size), rows)]
        if len(block) < batch_size:
            return
        yield torch.tensor(block, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Training


def lr_at(step: int, progress: float, peak: float, warmup: int, warmup_share: float = 0.0) -> float:
    """Linear warmup over `warmup` steps (or, with warmup_share > 0, up to that share of progress if
    it comes first), then cosine from peak to MIN_LR_RATIO * peak over progress."""
    if step < warmup and not (warmup_share and progress >= warmup_share):
        scale = (step + 1) / warmup
        if warmup_share:
            scale = max(scale, progress / warmup_share)
        return peak * min(1.0, scale)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return peak * (MIN_LR_RATIO + (1.0 - MIN_LR_RATIO) * cosine)


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start_time = time.time()
        self.log_path = os.path.join(args.output, "train_log.jsonl")

    def train(self) -> int:
        """Trains and saves; returns the exit status. Bad data is a ValueError raised before the
        output folder is made; a run that fails leaves no output folder it made itself."""
        args = self.args
        train_docs, val_docs = self._load_documents()
        created = not os.path.exists(args.output)
        os.makedirs(args.output, exist_ok=True)
        status = 1
        try:
            status = self._train(train_docs, val_docs)
        finally:
            if status != 0 and created and not os.path.exists(os.path.join(args.output, "config.json")):
                shutil.rmtree(args.output, ignore_errors=True)  # nothing saved: leave no trace
        return status

    def _train(self, train_docs: list[str], val_docs: list[str]) -> int:
        import torch
        from tqdm import tqdm

        args = self.args
        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        self.tokenizer_dir = tempfile.mkdtemp(prefix="fastcodellama-tokenizer-")
        try:
            sp = self._prepare_tokenizer(train_docs)
            self.ids = SpecialIds.from_spm(sp)
            if args.fim_rate > 0 and self.ids.fim is None:
                print("fastcodellama train: the tokenizer has no <PRE>/<SUF>/<MID>/<EOT>; use --fim-rate 0",
                      file=sys.stderr)
                return 2
            model = self._build_model(sp.get_piece_size())
            chunk_chars = CHARS_PER_TOKEN * args.seq_len
            val_rows = list(packed_rows(
                example_stream(sp.encode, self.ids, val_docs, chunk_chars, args.fim_rate, args.seed + 1, epochs=1),
                args.seq_len))[:args.eval_rows]
            if not val_rows:
                print("fastcodellama train: the validation set is shorter than one row", file=sys.stderr)
                return 2
            self.val = torch.tensor(val_rows, dtype=torch.long)
            train_batches = batches(packed_rows(
                example_stream(sp.encode, self.ids, train_docs, chunk_chars, args.fim_rate, args.seed),
                args.seq_len), args.batch_size)
            self.data_info = {"source": args.data, "train_documents": len(train_docs),
                              "validation_documents": len(val_docs), "train_chars": sum(map(len, train_docs)),
                              "validation_rows": len(val_rows)}
            return self._loop(model, train_batches, tqdm)
        finally:
            shutil.rmtree(self.tokenizer_dir, ignore_errors=True)

    def _load_documents(self) -> tuple[list[str], list[str]]:
        args = self.args
        if args.data == "stdlib":
            train, val = corpus.stdlib_corpus()
        else:
            train, val = corpus.read_jsonl(args.data), []
        if args.validation:
            val = corpus.read_jsonl(args.validation)
        elif not val:  # hold out every 50th document, or reuse the data when it is tiny
            held = [d for i, d in enumerate(train) if i % 50 == 49]
            train, val = ([d for i, d in enumerate(train) if i % 50 != 49], held) if held else (train, train)
        if not train:
            raise ValueError(f"no training documents in {args.data}")
        return train, val

    def _prepare_tokenizer(self, train_docs: list[str]):
        import sentencepiece as spm

        from fastcodellama.training import tokenizer_training

        args = self.args
        if args.init:
            for name in TOKENIZER_FILES:
                if os.path.isfile(os.path.join(args.init, name)):
                    shutil.copy(os.path.join(args.init, name), self.tokenizer_dir)
            if not os.path.isfile(os.path.join(self.tokenizer_dir, "tokenizer.model")):
                raise ValueError(f"--init {args.init} has no sentencepiece tokenizer.model (fine-tuning needs one)")
        else:
            vocab = PRESETS[args.preset]["vocab_size"]
            print(f"training a {vocab}-piece sentencepiece tokenizer...", flush=True)
            tokenizer_training.train_sentencepiece(train_docs, self.tokenizer_dir, vocab,
                                                   sample_bytes=int(args.tokenizer_sample_mb * 1e6),
                                                   threads=args.threads, seed=args.seed)
            tokenizer_training.write_hf_tokenizer_files(self.tokenizer_dir)
        return spm.SentencePieceProcessor(model_file=os.path.join(self.tokenizer_dir, "tokenizer.model"))

    def _build_model(self, vocab_size: int):
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

        if self.args.init:
            model = AutoModelForCausalLM.from_pretrained(self.args.init, dtype=torch.float32)
        else:
            shape = {**COMMON_CONFIG, **PRESETS[self.args.preset], "vocab_size": vocab_size}
            model = LlamaForCausalLM(LlamaConfig(**shape)).float()
        model.config.use_cache = False
        return model

    def _loop(self, model, train_batches, tqdm) -> int:
        import torch

        args = self.args
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
        self.n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {self.n_params / 1e6:.2f}M parameters; {self.data_info}", flush=True)
        self.step, self.tokens, self.stopped_by = 0, 0, "data"
        self.warmup = (args.warmup_steps, 0.0) if args.warmup_steps is not None else (AUTO_WARMUP_STEPS,
                                                                                       AUTO_WARMUP_SHARE)
        self.val_loss, self.val_step = self.evaluate(model), 0
        self._log({"val_loss": self.val_loss})
        last_save, recent = time.time(), []
        bar = tqdm(total=args.max_steps or None, desc="train", mininterval=2.0, dynamic_ncols=True)
        self.train_seconds = 0.0  # forward + backward + update only: the throughput we report
        for batch in train_batches:
            elapsed = time.time() - self.start_time
            if args.max_minutes and elapsed >= args.max_minutes * 60:
                self.stopped_by = "max_minutes"
                break
            progress = max(self.step / args.max_steps if args.max_steps else 0.0,
                           elapsed / (args.max_minutes * 60) if args.max_minutes else 0.0)
            lr = lr_at(self.step, progress, args.lr, *self.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_start = time.time()
            loss = self._loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            self.step += 1
            self.tokens += batch.shape[0] * (batch.shape[1] - 1)
            recent.append(loss.item())
            self.train_seconds += time.time() - step_start
            rate = self.tokens / max(1e-9, self.train_seconds)
            bar.update(1)
            bar.set_postfix(loss=f"{recent[-1]:.3f}", tok_s=f"{rate:.0f}", lr=f"{lr:.2e}", refresh=False)
            if args.eval_every and self.step % args.eval_every == 0:
                self._eval_and_log(model, recent, lr, rate, bar)
                recent = []
            due_by_steps = args.save_every and self.step % args.save_every == 0
            due_by_time = args.save_minutes and time.time() - last_save >= args.save_minutes * 60
            if due_by_steps or due_by_time:
                if recent:  # the checkpoint's validation loss is the current one
                    self._eval_and_log(model, recent, lr, rate, bar)
                    recent = []
                self.save(model, finished=False)
                last_save = time.time()
            if args.max_steps and self.step >= args.max_steps:
                self.stopped_by = "max_steps"
                break
        bar.close()
        if self.val_step != self.step:
            rate = self.tokens / max(1e-9, self.train_seconds)
            self._eval_and_log(model, recent, optimizer.param_groups[0]["lr"], rate, None)
        self.save(model, finished=True)
        print(f"done: {self.step} steps, {self.tokens} tokens, validation loss {self.val_loss:.4f}, "
              f"saved to {args.output}", flush=True)
        return 0

    @staticmethod
    def _loss(model, batch):
        import torch.nn.functional as F

        logits = model(input_ids=batch[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))

    def evaluate(self, model) -> float:
        import torch

        model.eval()
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(self.val), self.args.batch_size):
                rows = self.val[start:start + self.args.batch_size]
                total += self._loss(model, rows).item() * len(rows)
        model.train()
        return total / len(self.val)

    def _eval_and_log(self, model, recent: list[float], lr: float, rate: float, bar) -> None:
        self.val_loss, self.val_step = self.evaluate(model), self.step
        train_loss = sum(recent) / len(recent) if recent else None
        self._log({"train_loss": train_loss, "val_loss": self.val_loss, "lr": lr, "tokens_per_s": rate})
        message = (f"step {self.step}: train loss {train_loss if train_loss is None else round(train_loss, 4)}, "
                   f"validation loss {self.val_loss:.4f}, {rate:.0f} tokens/s")
        (bar.write if bar is not None else print)(message)

    def _log(self, record: dict) -> None:
        record = {"step": self.step, "tokens": self.tokens, "elapsed_s": round(time.time() - self.start_time, 1),
                  **record}
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def save(self, model, finished: bool) -> None:
        """Writes a bfloat16 Hugging Face folder beside `--output`, then moves its files in one by one,
        so that a reader never sees a half-written file."""
        import torch

        args = self.args
        staging = tempfile.mkdtemp(prefix=".staging-", dir=os.path.dirname(os.path.abspath(args.output)))
        try:
            half = copy.deepcopy(model).to(torch.bfloat16)
            half.config.dtype = torch.bfloat16
            half.config.use_cache = True
            half.save_pretrained(staging, safe_serialization=True)
            for name in TOKENIZER_FILES:
                if os.path.isfile(os.path.join(self.tokenizer_dir, name)):
                    shutil.copy(os.path.join(self.tokenizer_dir, name), staging)
            with open(os.path.join(staging, "training.json"), "w", encoding="utf-8") as f:
                json.dump(self._training_record(finished), f, indent=2)
            _mark_dtype(os.path.join(staging, "config.json"), "bfloat16")
            for name in sorted(os.listdir(staging)):
                os.chmod(os.path.join(staging, name), 0o644)
                os.replace(os.path.join(staging, name), os.path.join(args.output, name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _training_record(self, finished: bool) -> dict:
        import torch
        import transformers

        args = self.args
        wall = time.time() - self.start_time
        return {
            "command": _command_line(args),
            "argv": sys.argv,
            "finished": finished,
            "stopped_by": self.stopped_by if finished else None,
            "steps": self.step,
            "tokens_seen": self.tokens,
            "validation_loss": round(self.val_loss, 5),
            "wall_time_s": round(wall, 1),
            "train_tokens_per_s": round(self.tokens / max(1e-9, self.train_seconds), 1),
            "parameters": self.n_params,
            "preset": args.preset,
            "init": args.init,
            "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("func", "command")},
            "data": self.data_info,
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        }


def _mark_dtype(config_path: str, dtype: str) -> None:
    """transformers 5 writes "dtype"; older readers look for "torch_dtype"."""
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["dtype"] = config["torch_dtype"] = dtype
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed when run from a shell, else an equivalent one rebuilt from `args`."""
    argv0 = sys.argv[0].replace(os.sep, "/") if sys.argv else ""
    if argv0.endswith("fastcodellama/__main__.py"):
        return shlex.join(["python", "-m", "fastcodellama", *sys.argv[1:]])
    words = ["fastcodellama", "train"]
    for key, value in vars(args).items():
        if key in ("func", "command") or value is None:
            continue
        words += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(words)
