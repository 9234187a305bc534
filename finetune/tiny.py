"""Build the tiny offline base language model: a byte-level BPE tokenizer and a small Llama model
pretrained on generic technical English that ships with Python.

    python -m finetune.tiny --config pipeline/configs/tiny.yaml
    python -m finetune.tiny --config tiny --set finetune.tiny.steps=200 --out runs/tiny/models/tiny-lm-short
    python -m finetune.tiny --help-config | grep finetune.tiny

The pretraining text is the CPython documentation topics (`pydoc_data.topics`) and the docstrings
of the standard library's own modules, classes and functions, read from their source files with
`ast` (nothing is imported, so no module runs its side effects). It never includes the project's
knowledge base or QA splits: this model is the "vanilla" base, and it must stay vanilla.

Writes to `finetune.tiny.output` (default runs/tiny/models/tiny-lm): tokenizer files,
model.safetensors, config.json, generation_config.json, pretrain.json (loss history, sizes,
seconds) and the resolved config (ragft_config.yaml). The folder is built under a temporary name
and renamed when complete. A fixed `finetune.seed` gives identical weights on the same machine.

The model has no chat template on purpose: the generator prompts (pipeline/generate.py) then
use their plain "Question: ... Answer:" format, text this model has seen in pretraining shape.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sysconfig
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from finetune.common import seed_everything
from pipeline.cli import add_io_arguments
from pipeline.config import Config, ConfigError, TinyModelConfig, add_config_arguments, config_from_args, save_resolved_config
from pipeline.errors import run_cli
from pipeline.fileio import atomic_directory, write_json

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

# The "micro" variant that tests build once per session (tests/conftest.py `tiny_lm_dir`):
# ~60 k parameters, 30 steps on 150 k characters; seconds on 2 CPU cores. Same code path.
MICRO_OVERRIDES = (
    "finetune.tiny.vocab_size=512",
    "finetune.tiny.hidden_size=32",
    "finetune.tiny.num_layers=2",
    "finetune.tiny.num_heads=2",
    "finetune.tiny.intermediate_size=64",
    "finetune.tiny.max_seq_len=64",
    "finetune.tiny.steps=30",
    "finetune.tiny.batch_size=8",
    "finetune.tiny.learning_rate=0.005",
    "finetune.tiny.corpus_max_chars=150000",
)

EOS = "<|endoftext|>"
PAD = "<|pad|>"
# Standard-library folders that are tests, demos or vendored grammars rather than documentation.
_SKIP_PARTS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "__pycache__", "ensurepip", "pydoc_data"}


# --------------------------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------------------------


def _docstrings(source: str) -> list[str]:
    """Module, class and function docstrings of one source file, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= 40:  # one-liners like "Return x." teach little English
                out.append(doc)
    return out


def generic_corpus(max_chars: int) -> list[str]:
    """Documents of generic technical English from this Python installation, in a fixed order,
    at most `max_chars` characters in total. Never the project's data."""
    from pydoc_data.topics import topics

    def documents():
        for key in sorted(topics):
            yield topics[key].strip()
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in stdlib.rglob("*.py") if not (_SKIP_PARTS & set(p.relative_to(stdlib).parts)))
        for path in files:
            try:
                yield from _docstrings(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                continue

    kept, total = [], 0
    for doc in documents():  # lazy: a small budget does not parse the whole standard library
        if total + len(doc) > max_chars:
            doc = doc[: max_chars - total]
        if doc:
            kept.append(doc)
            total += len(doc)
        if total >= max_chars:
            break
    return kept


# --------------------------------------------------------------------------------------------
# tokenizer and model
# --------------------------------------------------------------------------------------------


def train_tokenizer(documents: Sequence[str], vocab_size: int) -> "PreTrainedTokenizerBase":
    """A byte-level BPE tokenizer (GPT-2 style: any UTF-8 text encodes, nothing is <unk>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(documents, trainer=trainer, length=len(documents))
    # No post-processor: no BOS/EOS is added on encode, so the tokens of a prompt are the same
    # whether TRL (add_special_tokens=False) or the generator tokenizes it.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        unk_token=None,
        padding_side="left",
        model_max_length=1_000_000,  # the model's own limit is in config.json (max_position_embeddings)
        clean_up_tokenization_spaces=False,
    )


def build_model(tiny: TinyModelConfig, tokenizer: "PreTrainedTokenizerBase", max_positions: int) -> "LlamaForCausalLM":
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny.hidden_size % tiny.num_heads:
        raise ConfigError(f"finetune.tiny.hidden_size ({tiny.hidden_size}) must be divisible by finetune.tiny.num_heads ({tiny.num_heads})")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,  # a third of the parameters would otherwise be a second embedding
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    return model


def _token_stream(tokenizer: "PreTrainedTokenizerBase", documents: Sequence[str]):
    import torch

    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for encoding in tokenizer._tokenizer.encode_batch(list(documents), add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eos)  # documents are separated by EOS, so the model learns where text ends
    return torch.tensor(ids, dtype=torch.long)


def pretrain(model: "LlamaForCausalLM", stream, tiny: TinyModelConfig, seed: int, log: Callable[[str], None] = print, show_progress: bool = True) -> list[dict[str, float]]:
    """Causal LM loss on random windows of the token stream; AdamW, warmup then cosine decay."""
    import torch
    from tqdm.auto import tqdm

    seq = tiny.max_seq_len
    if len(stream) <= seq + 1:
        raise ConfigError(f"finetune.tiny.corpus_max_chars gives only {len(stream)} tokens, fewer than max_seq_len+1 ({seq + 1}); raise it")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tiny.learning_rate, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, tiny.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, tiny.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))  # decays to 10% of the peak

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    history = []
    bar = tqdm(range(tiny.steps), desc="pretrain tiny LM", unit="step", dynamic_ncols=True, disable=not show_progress)
    for step in bar:
        starts = torch.randint(0, len(stream) - seq - 1, (tiny.batch_size,), generator=generator)
        batch = torch.stack([stream[s : s + seq] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        history.append({"step": step + 1, "loss": round(value, 4)})
        bar.set_postfix(loss=f"{value:.3f}")
    model.eval()
    return history


# --------------------------------------------------------------------------------------------
# the whole build
# --------------------------------------------------------------------------------------------


def build_tiny_lm(config: Config, output: str | Path | None = None, log: Callable[[str], None] = print, show_progress: bool = True) -> dict:
    """Corpus -> tokenizer -> model -> pretraining -> atomic save. Returns the report."""
    import torch

    tiny = config.finetune.tiny
    seed = config.finetune.seed
    output = Path(output or tiny.output)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if tiny.torch_threads is not None:
        torch.set_num_threads(tiny.torch_threads)
    try:
        return _build(config, tiny, seed, output, started, log, show_progress)
    finally:
        torch.set_num_threads(threads)


def _build(config: Config, tiny: TinyModelConfig, seed: int, output: Path, started: float, log: Callable[[str], None], show_progress: bool = True) -> dict:
    import torch

    seed_everything(seed)
    documents = generic_corpus(tiny.corpus_max_chars)
    chars = sum(len(d) for d in documents)
    log(f"corpus          {len(documents)} documents, {chars:,} characters (pydoc_data.topics + stdlib docstrings)")
    tokenizer = train_tokenizer(documents, tiny.vocab_size)
    stream = _token_stream(tokenizer, documents)
    log(f"tokenizer       byte-level BPE, {len(tokenizer)} tokens; corpus = {len(stream):,} tokens")
    # Room for prompts with retrieved passages at fine-tuning and inference time; RoPE has no
    # learned position table, so this costs nothing.
    max_positions = max(2048, tiny.max_seq_len)
    torch.manual_seed(seed)
    model = build_model(tiny, tokenizer, max_positions)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model           Llama, {tiny.num_layers} layers x {tiny.hidden_size} hidden, {n_params / 1e6:.2f} M parameters")
    history = pretrain(model, stream, tiny, seed, log, show_progress)
    seconds = round(time.perf_counter() - started, 1)
    tail = history[-min(20, len(history)) :]
    final_loss = sum(h["loss"] for h in tail) / len(tail)
    report = {
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "corpus_documents": len(documents),
        "corpus_characters": chars,
        "corpus_tokens": int(len(stream)),
        "steps": tiny.steps,
        "final_loss_mean_last_20": round(final_loss, 4),
        "seconds": seconds,
        "torch_threads": torch.get_num_threads(),
        "loss_history": history,
    }
    with atomic_directory(output) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "pretrain.json", report)
        save_resolved_config(config, tmp, extra={"kind": "tiny-lm", "parameters": n_params, "final_loss": report["final_loss_mean_last_20"], "seconds": seconds})
    log(f"pretrained      {tiny.steps} steps, final loss {final_loss:.3f} (mean of the last {len(tail)}), {seconds} s; wrote {output}")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.tiny",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_io_arguments(parser, out="Output folder of the model. Default: finetune.tiny.output of the profile.", out_metavar="DIR")
    parser.add_argument("--seed", type=int, help="Seed of tokenizer-independent randomness (init, batches). Default: finetune.seed (42).")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = []
    if args.out is not None:
        overrides.append(f"finetune.tiny.output={json.dumps(args.out)}")
    if args.seed is not None:
        overrides.append(f"finetune.seed={args.seed}")

    def body() -> None:
        config = config_from_args(args, overrides)
        build_tiny_lm(config)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
