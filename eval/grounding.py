"""`python -m eval.grounding`: how much of `full`'s answers their passages hold, under decoding
settings that keep the generator to its sources.

    python -m eval.grounding --data ../shared/data/seed-technical-qa/splits --split val --copy-bias 0,1,2,3 --out results/grounding/val.json
    python -m eval.grounding --data ... --split test --copy-bias 0,2 --out results/grounding/test.json    # run once
    python -m eval.grounding --predictions results/seed/predictions/full.jsonl                         # answers as given

`full` retrieves and reranks each question once (its first round, `retrieve_only`, with
`agent.on_weak: answer`: a question the grade would decline keeps its best passages); the RAFT
generator then answers every question once per `generator.copy_bias` value (a bias added to the
logits of the prompt's own tokens), reading the same passages. Per value: ROUGE-L and BERTScore F1
against the reference, the mean lexical support (pipeline.support: ROUGE-L precision against the
best cited passage) and the support rate (the share of answers at least half made of one passage's
words), the model-based support (pipeline.support.LikelihoodSupport: how much the passages raise the base
LM's log-probability of the answer, nats per token) and the share of answers it finds supported
(above 0), with 95% intervals, the paired ROUGE-L difference against the first value, and the same
lexical scores under `generator.on_unsupported: quote` (an answer under `generator.quote_below`,
or under the support threshold when that is unset, replaced by its best passage, quoted), computed
from the same answers.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Sequence

from pipeline.cli import add_io_arguments, config_for_data, finish_run
from pipeline.config import ConfigError, add_config_arguments
from pipeline.errors import run_cli


def _scores(config: Any, answers: Sequence[str], references: Sequence[str], passages: Sequence[Sequence[str]], bertscore: Any) -> dict[str, list[float]]:
    from eval.metrics import compute_answer_scores
    from pipeline.support import lexical_support

    scores = compute_answer_scores(answers, references, bertscore=bertscore)
    support = [lexical_support(a, p)[0] for a, p in zip(answers, passages)]
    return {
        "rougeL": [float(v) for v in scores.per_question["rougeL"]],
        "bertscore_f1": [float(v) for v in scores.per_question["bertscore_f1"]],
        "support": support,
        "supported": [1.0 if s >= config.generator.support_threshold else 0.0 for s in support],
    }


def evaluate_grounding(config: Any, split: str, biases: Sequence[float], *, quote_below: Sequence[float] = (), limit: int | None = None, show_progress: bool = True, log: Callable[[str], None] = print) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from tqdm.auto import tqdm

    from eval.metrics import BertScoreModel
    from pipeline.data import load_split
    from pipeline.engine import Components, build_query_engine, keep_valid_citations, passage_text, quoted_passage
    from pipeline.generate import answer_batch
    from pipeline.metrics import paired_mean_test, summarize
    from pipeline.models import load_llm
    from pipeline.support import MODEL_SUPPORTED, LikelihoodSupport, lexical_support, quote_threshold

    import dataclasses

    # every question gets passages to answer from: the grade's declines are measured elsewhere
    # (eval.answerability; a compare's answers as given: --predictions), and a declined question's
    # empty passages would turn its answer closed-book here
    config = dataclasses.replace(config, agent=dataclasses.replace(config.agent, on_weak="answer"))
    rows = load_split(config.data.dir, split)[:limit] if limit else load_split(config.data.dir, split)
    if not quote_below:  # the profile's policy: generator.quote_below, else every unsupported answer
        quote_below = [quote_threshold(config)]
    components = Components(config)
    engine = build_query_engine(config, "full", components=components)
    started = time.perf_counter()
    retrieved = [engine.retrieve_only(r["question"]) for r in tqdm(rows, desc="full: retrieve + rerank", disable=not show_progress)]
    seconds = {"retrieve": round(time.perf_counter() - started, 1)}
    nodes = [list(r["nodes"]) for r in retrieved]
    asked = [r["state"].asked for r in retrieved]  # what each question was searched as
    passages = [[passage_text(n) for n in ns] for ns in nodes]
    references = [r["answer"] for r in rows]
    bertscore = BertScoreModel(config.eval.bertscore_model, allow_fallback=True)
    raft = components.adapter_path("raft")
    judge = LikelihoodSupport.from_config(config)
    result: dict[str, Any] = {"split": split, "questions": len(rows), "settings": {}, "seconds": seconds}
    per_question = [{"question": r["question"], "reference": r["answer"], "passages": [n.node.node_id for n in ns], "answers": {}} for r, ns in zip(rows, nodes)]
    first: dict[str, list[float]] = {}
    for bias in biases:
        llm = load_llm(config, adapter=raft, verbose=False, copy_bias=bias)
        started = time.perf_counter()
        texts = answer_batch(llm, asked, [p or None for p in passages], max_passage_chars=config.generator.max_passage_chars, show_progress=show_progress)
        texts = [keep_valid_citations(t, len(ns)) for t, ns in zip(texts, nodes)]
        seconds[f"generate copy_bias={bias}"] = round(time.perf_counter() - started, 1)
        values = _scores(config, texts, references, passages, bertscore)
        started = time.perf_counter()
        values["model_support"] = judge.score(asked, texts, passages, progress=f"model support, copy_bias={bias}" if show_progress else None)
        values["model_supported"] = [1.0 if v > MODEL_SUPPORTED else 0.0 for v in values["model_support"]]
        seconds[f"model support copy_bias={bias}"] = round(time.perf_counter() - started, 1)
        best_passages = [lexical_support(text, p)[1] for text, p in zip(texts, passages)]
        quotes: dict[str, Any] = {}
        for below in quote_below:
            quoted = [text if score >= below or best is None else quoted_passage(ns[best], best + 1) for text, ns, best, score in zip(texts, nodes, best_passages, values["support"])]
            quotes[f"{below:g}"] = summarize(_scores(config, quoted, references, passages, bertscore), samples=config.eval.bootstrap_samples, seed=config.eval.seed)
            quotes[f"{below:g}"]["quoted"] = sum(text != q for text, q in zip(texts, quoted))
        entry = summarize(values, samples=config.eval.bootstrap_samples, seed=config.eval.seed)
        entry["quote"] = quotes[f"{quote_below[0]:g}"]
        entry["quote_below"] = quotes
        if not first:
            first = values
        else:
            entry["rougeL_minus_first"] = paired_mean_test(values["rougeL"], first["rougeL"], samples=config.eval.bootstrap_samples, seed=config.eval.seed)
        result["settings"][str(bias)] = entry
        for row, text, s, m in zip(per_question, texts, values["support"], values["model_support"]):
            row["answers"][str(bias)] = {"answer": text, "support": round(s, 4), "model_support": round(m, 4)}
        log(f"copy_bias {bias}: ROUGE-L {entry['rougeL']:.4f}, support rate {entry['supported']:.3f}, model-supported {entry['model_supported']:.3f} (quote policy: {entry['quote']['supported']:.3f}, ROUGE-L {entry['quote']['rougeL']:.4f})")
    return result, per_question


def predictions_support(config: Any, path: str) -> dict[str, Any]:
    """The support of the answers an `eval.compare` predictions file holds, as they were given
    (a quote is given as the quote): over the answered questions (a declined one, trace
    `not_found`, cites nothing), the mean lexical support and the supported share against its
    sources' text, with 95% intervals; the counts of declined, quoted and flagged answers; ROUGE-L
    over every question and over the answered ones."""
    from eval.metrics import rouge_l_f1
    from eval.score import read_predictions
    from pipeline.metrics import summarize
    from pipeline.support import lexical_support

    rows = read_predictions(path, whole=True)
    traces = [row.get("trace") or {} for row in rows]
    answered = [i for i, t in enumerate(traces) if not t.get("not_found")]
    support = [lexical_support(rows[i]["prediction"], [str(s.get("text", "")) for s in rows[i].get("sources") or []])[0] for i in answered]
    rouge = rouge_l_f1([r["prediction"] for r in rows], [r["reference"] for r in rows])
    values = {"support": support, "supported": [1.0 if v >= config.generator.support_threshold else 0.0 for v in support], "rougeL_answered": [rouge[i] for i in answered]}
    actions = [((traces[i].get("support") or {}).get("action") or "none") for i in answered]
    result: dict[str, Any] = {"predictions": str(path), "questions": len(rows), "declined": len(rows) - len(answered), "answered": len(answered), "quoted": actions.count("quoted"), "flagged": actions.count("flagged")}
    result.update(summarize(values, samples=config.eval.bootstrap_samples, seed=config.eval.seed) if answered else {})
    result["rougeL"] = float(sum(rouge) / len(rouge)) if rouge else 0.0
    return result


def _cell(summary: Any, metric: str) -> str:
    return f"{summary[metric]:.4f} [{summary['ci95'][metric][0]:.4f}, {summary['ci95'][metric][1]:.4f}]"


def to_markdown(result: Any) -> str:
    if "predictions" in result:
        return "\n".join([
            f"### Support of the answers in `{result['predictions']}` ({result['questions']} questions)",
            "",
            "| declined | answered | quoted | flagged | supported (>= 0.5) | support (mean) | ROUGE-L (answered) | ROUGE-L (all) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {result['declined']} | {result['answered']} | {result['quoted']} | {result['flagged']} | {_cell(result, 'supported')} | {_cell(result, 'support')} | {_cell(result, 'rougeL_answered')} | {result['rougeL']:.4f} |",
        ])
    lines = [
        f"### Grounding of `full`'s answers, split {result['split']} ({result['questions']} questions)",
        "",
        "| copy_bias | ROUGE-L | BERTScore F1 | support (mean) | supported (>= 0.5) | model support (nats/token) | model-supported (> 0) | ROUGE-L - first [95%] | with `quote`: supported | with `quote`: ROUGE-L |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bias, s in result["settings"].items():
        delta = s.get("rougeL_minus_first")
        cell = f"{delta['diff']:+.4f} [{delta['ci95_low']:+.4f}, {delta['ci95_high']:+.4f}]" if delta else "–"
        model = f"{_cell(s, 'model_support')} | {_cell(s, 'model_supported')}" if "model_support" in s else "– | –"  # runs from before the model check
        lines.append(f"| {bias} | {_cell(s, 'rougeL')} | {_cell(s, 'bertscore_f1')} | {_cell(s, 'support')} | {_cell(s, 'supported')} | {model} | {cell} | {_cell(s['quote'], 'supported')} | {_cell(s['quote'], 'rougeL')} |")
    policies = [(bias, below, q) for bias, s in result["settings"].items() for below, q in s.get("quote_below", {}).items()]
    if len(policies) > len(result["settings"]):
        lines += ["", "`on_unsupported: quote` by `quote_below` (an answer under it replaced by its best passage), from the same answers:", "",
                  "| copy_bias | quote_below | quoted | supported (>= 0.5) | ROUGE-L |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {bias} | {below} | {q['quoted']} | {_cell(q, 'supported')} | {_cell(q, 'rougeL')} |" for bias, below, q in policies]
    lines += ["", "Seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items()) + "."]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.grounding", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    add_io_arguments(
        parser,
        data="Prepared data folder whose split is answered (its artifacts are the systems'). Default: data.dir of the profile.",
        split="Split answered: val (choose the setting) or test (run once). Default: val.",
        split_default="val",
        formats="md (a table) or json.",
        out="Write the result as JSON here (and the per-question answers beside it, .questions.jsonl).",
    )
    parser.add_argument("--copy-bias", default="0,2", metavar="LIST", help="generator.copy_bias values compared on the same passages, the first as the reference of the paired differences. Default: 0,2.")
    parser.add_argument("--quote-below", default=None, metavar="LIST", help="generator.quote_below values for the quote policy computed from the same answers, the first in the main table. Default: the profile's.")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="Only the first N questions (quick runs). Default: all.")
    parser.add_argument("--predictions", default=None, metavar="FILE", help="Generate nothing: the support of the answers an eval.compare predictions file holds, as given (declined, quoted and flagged answers counted).")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars (logs stay).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()

    def body() -> None:


        try:
            biases = [float(v) for v in args.copy_bias.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--copy-bias {args.copy_bias!r}: comma-separated numbers, e.g. 0,1,2") from None
        if not biases or any(not 0.0 <= b <= 20.0 for b in biases):
            raise ConfigError(f"--copy-bias {args.copy_bias!r}: one or more values between 0 and 20, e.g. 0,1,2")
        try:
            quote_below = [float(v) for v in (args.quote_below or "").split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--quote-below {args.quote_below!r}: comma-separated support values, e.g. 0.3,0.5") from None
        if any(not 0.0 <= q <= 1.0 for q in quote_below):
            raise ConfigError(f"--quote-below {args.quote_below!r}: values between 0 and 1, e.g. 0.3,0.5")
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit {args.limit}: a count >= 1")
        config = config_for_data(args)
        if args.predictions:
            finish_run(args, "eval.grounding", argv, started, predictions_support(config, args.predictions), to_markdown)
            return
        result, rows = evaluate_grounding(config, args.split, biases, quote_below=quote_below, limit=args.limit, show_progress=not args.no_progress)
        finish_run(args, "eval.grounding", argv, started, result, to_markdown, rows=rows)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
