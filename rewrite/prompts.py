"""Rewriter prompts: the one place they are written, used by inference and by rewriter training.

Each mode has one message template, and so has the chat's condense step (conversation + last
message -> a standalone question); `pipeline.generate.render_prompt` renders it with the model's
chat template or the plain format, exactly as for answer generation. No retrieved passage ever
enters a rewriter prompt. What a rewrite mode writes (hypothetical passages, phrasings,
sub-questions) is used only as a search query, never shown to the generator; a condensed question
takes the message's place for the whole query: retrieval, the reranker and the generator read it.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

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


CONDENSE_SYSTEM = (
    "Rewrite the user's last message as a standalone search question: keep only what it asks, "
    "drop greetings and background, and replace every word that refers back to the conversation "
    "(it, this, they, the former...) by what it refers to. If the message asks two different "
    "things, write two questions, one per line. If it already stands alone, write it unchanged. "
    "Write only the question(s)."
)
CONDENSE_ANSWER_CHARS = 300  # of each earlier answer: the user's own earlier questions carry most of the subject


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


def condense_messages(history: Sequence[ChatMessage], message: str, *, answer_chars: int = CONDENSE_ANSWER_CHARS) -> list[ChatMessage]:
    """The condense prompt: the conversation so far (the user's turns whole, each answer cut to
    `answer_chars` characters) and the last message -> one standalone search question. The history
    is data in the user turn, never chat turns of the prompt, so the model continues with the
    question and not with another answer."""
    lines = []
    for turn in history:
        text = " ".join((turn.content or "").split())
        if not text:
            continue
        if turn.role == MessageRole.ASSISTANT:
            lines.append(f"Assistant: {text[:answer_chars]}{'…' if len(text) > answer_chars else ''}")
        elif turn.role == MessageRole.USER:
            lines.append(f"User: {text}")
    conversation = "\n".join(lines) or "(none)"
    return [
        ChatMessage(role=MessageRole.SYSTEM, content=CONDENSE_SYSTEM),
        ChatMessage(role=MessageRole.USER, content=f"Conversation:\n{conversation}\n\nLast message: {_check_question(message)}\n\nStandalone question:"),
    ]


def llamaindex_condense_messages(history: Sequence[ChatMessage], message: str) -> list[ChatMessage]:
    """LlamaIndex's CondenseQuestionChatEngine prompt (its DEFAULT_TEMPLATE, the history as its
    `messages_to_history_str` writes it), one user turn as its `llm.predict` sends it: the
    benchmark's untrained-baseline on the same LM."""
    from llama_index.core.chat_engine.condense_question import DEFAULT_TEMPLATE
    from llama_index.core.base.llms.generic_utils import messages_to_history_str

    return [ChatMessage(role=MessageRole.USER, content=DEFAULT_TEMPLATE.format(chat_history=messages_to_history_str(list(history)), question=_check_question(message)))]


def condense_training_example(history: Sequence[ChatMessage], message: str, standalone: str, tokenizer: Optional[object] = None) -> dict[str, str]:
    """A TRL prompt/completion pair for a condenser adapter: the prompt is exactly the inference prompt."""
    from pipeline.generate import prompt_completion

    return prompt_completion(condense_messages(history, message), standalone, tokenizer)


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
