"""The chat's condense step (rewrite.condense): the no-model gate, the prompt, and the Condenser
with a scripted LlamaIndex LLM (the model is irrelevant here)."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, CompletionResponse, CompletionResponseGen, LLMMetadata, MessageRole
from llama_index.core.llms.custom import CustomLLM

from pipeline.models import PromptTooLongError
from rewrite import Condenser, needs_condensing
from rewrite.condense import LONG_MESSAGE_CHARS, clean_condensed
from rewrite.prompts import CONDENSE_SYSTEM, condense_messages, condense_training_example

HISTORY = [
    ChatMessage(role=MessageRole.USER, content="What is a B-tree?", additional_kwargs={"standalone_question": "What is a B-tree?"}),
    ChatMessage(role=MessageRole.ASSISTANT, content="A balanced search tree whose nodes hold many sorted keys. " * 20),
]


class CountingLLM(CustomLLM):
    """Replies with a fixed text (or raises `error`); remembers every prompt."""

    reply: str = ""
    calls: list = []
    error: Any = None

    def __init__(self, reply: str = "", error: Any = None) -> None:
        super().__init__()
        self.reply, self.calls, self.error = reply, [], error

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata()

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.calls.append(prompt)
        if self.error is not None:
            raise self.error
        return CompletionResponse(text=self.reply)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise NotImplementedError


# ------------------------------------------------------------------ the gate

STANDALONE = [
    "What is a B-tree?",
    "How does a hash table handle collisions?",
    "What is a lock that threads share?",  # a relative 'that' refers to nothing earlier
    "What is the difference between TCP and UDP?",
    "Examples of sorting algorithms",
    "Why is Python slow?",
    "Define recursion",
]
FOLLOW_UPS = {
    "and why do databases use it?": "opens with 'and'",
    "What about deletion?": "opens with 'what about'",
    "Compared to a hash table?": "opens with 'compared to'",
    "Tell me more": "opens with 'tell me more'",
    "Is it thread-safe?": "refers back: 'it'",
    "How are they kept balanced?": "refers back: 'they'",
    "What does this mean?": "refers back: 'this'",
    "How does that work?": "refers back: 'that'",
    "Is that true?": "refers back: 'that'",
    "Which one is faster?": "refers back: 'which one'",
    "What is the former used for?": "refers back: 'the former'",
    "Why?": "elliptical",
    "How so?": "elliptical",
    "Give me an example": "elliptical",
    "Explain further": "elliptical",
    "In Python?": "elliptical: a short phrase opening with 'in'",
}


@pytest.mark.parametrize("message", STANDALONE)
def test_a_message_that_stands_alone_passes_the_gate(message):
    needed, reason = needs_condensing(message, HISTORY)
    assert not needed and reason.startswith("stands alone")


@pytest.mark.parametrize(("message", "why"), FOLLOW_UPS.items())
def test_a_follow_up_is_sent_to_the_condenser_with_its_reason(message, why):
    needed, reason = needs_condensing(message, HISTORY)
    assert needed and why in reason


@pytest.mark.parametrize("message", ["and why do databases use it?", "Why?"])
def test_a_first_turn_is_never_condensed(message):
    assert needs_condensing(message, []) == (False, "first turn: no earlier question")
    only_answers = [ChatMessage(role=MessageRole.ASSISTANT, content="Hello")]
    assert needs_condensing(message, only_answers)[0] is False


def test_a_long_message_carries_its_own_context():
    message = "Why does it crash? " + "x = compute(it) " * 40
    assert len(message) > LONG_MESSAGE_CHARS
    needed, reason = needs_condensing(message, HISTORY)
    assert not needed and reason.startswith("long message")


@pytest.mark.parametrize("message", ["哈希表如何处理冲突？", "🙂🚀🔥", "Как работает хеш-таблица?"])
def test_other_scripts_go_to_the_model_since_the_word_lists_are_english(message):
    needed, reason = needs_condensing(message, HISTORY)
    assert needed and "Latin script" in reason


# ------------------------------------------------------------------ the prompt and the output


def test_condense_prompt_shows_the_conversation_with_answers_cut_and_the_last_message():
    system, user = condense_messages(HISTORY, "and why do databases use it?")
    assert system.content == CONDENSE_SYSTEM
    assert "User: What is a B-tree?" in user.content
    answer_line = next(line for line in user.content.splitlines() if line.startswith("Assistant: "))
    assert len(answer_line) <= len("Assistant: ") + 301 and answer_line.endswith("…")
    assert user.content.rstrip().endswith("Last message: and why do databases use it?\n\nStandalone question:")
    example = condense_training_example(HISTORY, "and why?", "Why do databases use B-trees?")
    assert example["prompt"].startswith(CONDENSE_SYSTEM) and example["completion"].strip() == "Why do databases use B-trees?"


@pytest.mark.parametrize(
    ("raw", "question"),
    [
        ("Why do databases use B-trees?", "Why do databases use B-trees?"),
        ('Standalone question: "Why do databases use B-trees?"\nAnswer: because', "Why do databases use B-trees?"),
        ("\n\n  Question: How are B-trees balanced?  \nQuestion: next", "How are B-trees balanced?"),
        ("", ""),
    ],
)
def test_the_models_text_is_cleaned_to_one_question(raw, question):
    assert clean_condensed(raw) == question


# ------------------------------------------------------------------ the Condenser


def test_standalone_messages_cost_no_model_call_and_the_loader_is_never_called():
    loads = []
    condenser = Condenser(lambda: loads.append(1) or CountingLLM("x"))
    first = condenser.condense("What is a B-tree?", [])
    second = condenser.condense("  How does a hash table handle collisions? ", HISTORY)
    assert (first.question, first.condensed, first.method) == ("What is a B-tree?", False, "as-is")
    assert second.question == "How does a hash table handle collisions?" and not second.condensed
    assert loads == []


def test_a_follow_up_is_rewritten_by_the_model():
    llm = CountingLLM("Standalone question: Why do databases use B-trees?")
    made = Condenser(llm, max_new_tokens=16).condense("and why do databases use it?", HISTORY)
    assert (made.question, made.condensed, made.method) == ("Why do databases use B-trees?", True, "llm")
    assert len(llm.calls) == 1 and "Last message: and why do databases use it?" in llm.calls[0]
    assert made.history_messages == 2 and made.seconds >= 0 and made.as_dict()["reason"].startswith("continues")


def test_an_unusable_rewrite_falls_back_to_the_previous_question_and_the_message():
    made = Condenser(CountingLLM("  \n ")).condense("Why?", HISTORY)
    assert made.condensed and made.method == "fallback"
    assert made.question == "What is a B-tree? Why?" and "no usable question" in made.note


def test_a_condense_prompt_over_the_context_window_falls_back_instead_of_failing():
    llm = CountingLLM(error=PromptTooLongError("the prompt is 3000 tokens long ..."))
    made = Condenser(llm).condense("Is it thread-safe?", HISTORY)
    assert made.method == "fallback" and "did not fit" in made.note
    assert made.question == "What is a B-tree? Is it thread-safe?"


def test_condensing_off_uses_every_message_as_typed():
    condenser = Condenser(None, enabled=False)
    made = condenser.condense("and why?", HISTORY)
    assert made.question == "and why?" and not made.condensed and "off" in made.reason
    with pytest.raises(ValueError, match="needs an llm"):
        Condenser(None)
    with pytest.raises(ValueError, match="non-empty string"):
        condenser.condense("  ", HISTORY)
