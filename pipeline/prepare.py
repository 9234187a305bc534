"""Prepare question/answer data: validate, de-duplicate (exact, then semantic), split.

    python -m pipeline.prepare                                   # the bundled demo data (tiny profile)
    python -m pipeline.prepare --input ../shared/data/seed-technical-qa/dataset.jsonl --out runs/seed/data
    python -m pipeline.prepare --input qa.csv --out data/mine --threshold 0.95 --skip-invalid

Writes train.jsonl, val.jsonl, test.jsonl and prepare.json (counts and resolved settings) to --out,
plus the resolved config (ragft_config.yaml). Files are written atomically: an interrupted run
never leaves a split that looks complete.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

from pipeline.cli import add_io_arguments
from pipeline.config import Config, ConfigError, add_config_arguments, config_from_args, save_resolved_config
from pipeline.data import (
    SPLITS,
    check_ratios,
    exact_dedup,
    load_records,
    semantic_dedup,
    split_records,
)
from pipeline.errors import run_cli
from pipeline.fileio import atomic_write_many, jsonl_text
from pipeline.models import check_model_source


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.prepare",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", metavar="FILE", help="Raw question/answer file: .jsonl (one object per line), .json (a list of objects) or .csv (header with question,answer). Default: data.input of the profile.")
    add_io_arguments(parser, out="Folder for train/val/test.jsonl and prepare.json. Default: data.dir of the profile.", out_metavar="DIR")
    parser.add_argument("--threshold", type=float, metavar="T", help="Semantic de-duplication: drop a question whose cosine similarity with an earlier kept question is > T (0 < T <= 1; 1 disables). Default: data.dedup_threshold (0.9).")
    parser.add_argument("--seed", type=int, help="Seed of the shuffle before splitting. Default: data.seed (42).")
    parser.add_argument("--ratios", metavar="TRAIN,VAL,TEST", help="Split fractions summing to 1; boundaries are int(fraction * n). Default: data.ratios (0.7,0.15,0.15).")
    parser.add_argument("--skip-invalid", action="store_true", default=None, help="Skip invalid rows and report them, instead of stopping at the first one.")
    parser.add_argument("--model", metavar="MODEL", help="Embedding model for semantic de-duplication (hub id or folder). Default: data.dedup_model (all-MiniLM-L6-v2, bundled).")
    add_config_arguments(parser)
    return parser


def _overrides_from_flags(args: argparse.Namespace) -> list[str]:
    """Turn the command's own flags into config overrides, so the resolved config shows them."""
    import json

    overrides = []
    if args.input is not None:
        overrides.append(f"data.input={json.dumps(args.input)}")
    if args.out is not None:
        overrides.append(f"data.dir={json.dumps(args.out)}")
    if args.threshold is not None:
        overrides.append(f"data.dedup_threshold={args.threshold!r}")
    if args.seed is not None:
        overrides.append(f"data.seed={args.seed}")
    if args.ratios is not None:
        try:
            ratios = [float(part) for part in args.ratios.split(",")]
        except ValueError:
            raise ConfigError(f"--ratios {args.ratios!r} must be three comma-separated numbers, e.g. 0.7,0.15,0.15") from None
        overrides.append(f"data.ratios={json.dumps(ratios)}")
    if args.skip_invalid:
        overrides.append("data.skip_invalid=true")
    if args.model is not None:
        overrides.append(f"data.dedup_model={json.dumps(args.model)}")
    return overrides


def make_embed_fn(model_reference: str, device: str = "auto", *, allow_pickle: bool = False):
    """A function embedding questions with normalized sentence-transformers vectors, with a progress bar."""
    from pipeline.encoders import load_sentence_transformer

    model = None

    def embed(texts: list[str]):
        nonlocal model
        if model is None:  # load only if there is something to embed
            model = load_sentence_transformer(model_reference, device=device, allow_pickle=allow_pickle)
        return model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=True)

    return embed


def prepare(config: Config, *, embed=None, log=print) -> dict:
    """Run every stage for `config.data`; write the splits and prepare.json; return the report."""
    data = config.data
    check_ratios(data.ratios)
    started = time.perf_counter()
    loaded = load_records(data.input, skip_invalid=data.skip_invalid)
    log(f"loaded          {len(loaded.records):>6} records from {data.input}" + (f" ({len(loaded.skipped)} invalid rows skipped)" if loaded.skipped else ""))
    for row in loaded.skipped[:20]:
        log(f"  skipped {row}")
    if len(loaded.skipped) > 20:
        log(f"  ... and {len(loaded.skipped) - 20} more (all listed in prepare.json)")
    exact = exact_dedup(loaded.records)
    log(f"exact dedup     {len(exact):>6} (-{len(loaded.records) - len(exact)} on question.strip().lower())")
    if data.dedup_threshold >= 1.0:
        semantic = exact
        log(f"semantic dedup  {len(semantic):>6} (disabled: threshold 1.0)")
    else:
        if embed is None:
            embed = make_embed_fn(check_model_source(config, data.dedup_model, "data.dedup_model"), allow_pickle=config.security.allow_pickle_weights)
        semantic = semantic_dedup(exact, embed, data.dedup_threshold)
        log(f"semantic dedup  {len(semantic):>6} (-{len(exact) - len(semantic)} with cosine > {data.dedup_threshold} on {data.dedup_model})")
    splits = split_records(semantic, data.ratios, data.seed)
    sizes = {name: len(splits[name]) for name in SPLITS}
    log(f"split           {sizes['train']} / {sizes['val']} / {sizes['test']} (train / val / test, seed {data.seed})")
    out = Path(data.dir)
    report = {
        "counts": {
            "raw": len(loaded.records) + len(loaded.skipped),
            "invalid_skipped": len(loaded.skipped),
            "valid": len(loaded.records),
            "exact_dedup": len(exact),
            "semantic_dedup": len(semantic),
            **sizes,
        },
        "settings": {
            "input": str(data.input),
            "out": str(out),
            "dedup_threshold": data.dedup_threshold,
            "dedup_model": data.dedup_model,
            "seed": data.seed,
            "ratios": list(data.ratios),
            "skip_invalid": data.skip_invalid,
        },
        "skipped_rows": [{"line": row.line, "problem": row.problem} for row in loaded.skipped],
        "seconds": round(time.perf_counter() - started, 2),
    }
    # the three splits and their report together: a run that stops while writing (Ctrl-C, a full
    # disk) leaves the previous ones whole, never new train with old test
    atomic_write_many({**{out / f"{name}.jsonl": jsonl_text(splits[name]) for name in SPLITS}, out / "prepare.json": json.dumps(report, indent=2, ensure_ascii=False) + "\n"})
    save_resolved_config(config, out, extra={"kind": "prepared-data", "counts": report["counts"]})
    counts = report["counts"]
    log(f"counts: {counts['valid']} -> {counts['exact_dedup']} -> {counts['semantic_dedup']}; wrote {out}/{{train,val,test}}.jsonl and prepare.json in {report['seconds']} s")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> None:
        config = config_from_args(args, _overrides_from_flags(args))
        prepare(config)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
