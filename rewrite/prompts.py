"""Rewriter prompts: the one place they are written, used by inference and by rewriter training.

Each mode has one message template; `pipeline.generate.render_prompt` renders it with the
model's chat template or the plain format, exactly as for answer generation. The question is the
only input: no retrieved passage ever enters a rewriter prompt, and what the rewriter writes is
used only as a search query, never shown to the generator.
"""

from __future__ import annotations

import re
from typing import Optional

from llama_index.core.base.llms.types import ChatMessage, MessageRole

HYDE_SYSTEM = (
    "You write the passage of a technical knowledge base that answers the question. "
    "Write one to three factual sentences, as the knowledge base would, without repeating the question."
)
MULTI_SYSTEM = (
    "Rewrite the technical question in {n} different ways that keep its meaning, "
    "using other words a textbook might use. Write one rewrite per line, numbered 1., 2., ..."
)
DECOMPOSE_SYSTEM = (
    "Split the technical question into at most {n} self-contained sub-questions, each asking one "
    "thing. Write one sub-question per line, numbered 1., 2., ... If it asks one thing only, "
    "write it unchanged."
)


def _check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"rewriter: the question must be a non-empty string; got {question!r}")
    return question.strip()


def hyde_messages(question: str) -> list[ChatMessage]:
    """Ask for the answer text of the knowledge-base passage that would answer `question`."""
    return [
        ChatMessage(role=MessageRole.SYSTEM, content=HYDE_SYSTEM),
        ChatMessage(role=MessageRole.USER, content=f"Question: {_check_question(question)}"),
    ]


def multi_messages(question: str, n: int) -> list[ChatMessage]:
    return [
        ChatMessage(role=MessageRole.SYSTEM, content=MULTI_SYSTEM.format(n=n)),
        ChatMessage(role=MessageRole.USER, content=f"Question: {_check_question(question)}"),
    ]


def decompose_messages(question: str, n: int) -> list[ChatMessage]:
    return [
        ChatMessage(role=MessageRole.SYSTEM, content=DECOMPOSE_SYSTEM.format(n=n)),
        ChatMessage(role=MessageRole.USER, content=f"Question: {_check_question(question)}"),
    ]


def rewrite_messages(mode: str, question: str, n: int) -> list[ChatMessage]:
    if mode == "hyde":
        return hyde_messages(question)
    if mode == "multi":
        return multi_messages(question, n)
    if mode == "decompose":
        return decompose_messages(question, n)
    raise ValueError(f"rewriter: no prompt for mode {mode!r}; use hyde, multi or decompose")


def hyde_training_example(question: str, answer: str, tokenizer: Optional[object] = None) -> dict[str, str]:
    """A TRL prompt/completion pair for the HyDE rewriter: the prompt is exactly the inference prompt."""
    from pipeline.generate import prompt_completion

    return prompt_completion(hyde_messages(question), answer, tokenizer)


_NUMBERING = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")
_LABEL = re.compile(r"^\s*(?:question|sub-question|rewrite)\s*\d*\s*:\s*", re.IGNORECASE)


def parse_lines(text: str, *, original: str, limit: int) -> list[str]:
    """Numbered or bulleted lines -> distinct questions, without the original, at most `limit`."""
    seen = {original.strip().lower()}
    items: list[str] = []
    for line in text.splitlines():
        item = _LABEL.sub("", _NUMBERING.sub("", line)).strip()
        key = item.lower()
        if len(item) < 8 or key in seen or not re.search(r"[A-Za-z]{3}", item):
            continue
        seen.add(key)
        items.append(item)
        if len(items) == limit:
            break
    return items
