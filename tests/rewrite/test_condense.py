"""The chat's condense step (rewrite.condense): the no-model gate, the prompt, and the Condenser
with a scripted LlamaIndex LLM (the model is irrelevant here)."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, CompletionResponse, CompletionResponseGen, LLMMetadata, MessageRole
from llama_index.core.llms.custom import CustomLLM

from pipeline.models import PromptTooLongError
from rewrite import Condenser, needs_condensing
from rewrite.condense import LONG_MESSAGE_CHARS, MESSAGE_CHARS, PASTE_CHARS, bounded_message, clean_condensed, question_lines
from rewrite.prompts import CONDENSE_SYSTEM, condense_messages, condense_training_example, llamaindex_condense_messages

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


@pytest.mark.parametrize("message", ["Why?", "What is a B-tree?", "Explain the CAP theorem in distributed systems."])
def test_a_clean_first_turn_costs_no_model_call(message):
    assert needs_condensing(message, []) == (False, "first turn: one clean question")
    only_answers = [ChatMessage(role=MessageRole.ASSISTANT, content="Hello")]
    assert needs_condensing(message, only_answers)[0] is False


JOINED_OR_WRAPPED = {
    "whats a bloom filter for + how does a binary heap keep its order": "'+'",
    "explain the raft consensus algorithm. also whats a quorum in distributed dbs": "several sentences",
    "what is a zombie process & what does the scheduler do in an OS": "'&'",
    "two things: what is a message broker": "'two things'",
    "What is the difference between TCP and UDP?": "'and'",  # one ask, but the gate cannot tell: the LM copies it
    "hi all, my manager keeps mentioning this in standups and honestly I am lost, last week it was GitOps, can someone tell me what a canary deployment is": "long message",
}


@pytest.mark.parametrize(("message", "why"), JOINED_OR_WRAPPED.items())
def test_a_joined_or_wrapped_message_goes_to_the_model_first_turn_or_not(message, why):
    needed, reason = needs_condensing(message, [])
    assert needed and why in reason
    assert needs_condensing(message, HISTORY)[0]  # after the first turn too (maybe for another reason first)


def test_a_long_follow_up_goes_to_the_model():
    message = "Why does it crash? " + "x = compute(it) " * 40
    assert len(message) > LONG_MESSAGE_CHARS
    needed, reason = needs_condensing(message, HISTORY)
    assert needed and reason.startswith("long message")


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
    ("raw", "questions"),
    [
        ("Why do databases use B-trees?", ["Why do databases use B-trees?"]),
        ('Standalone question: "Why do databases use B-trees?"', ["Why do databases use B-trees?"]),
        ("\n\n  Question: How are B-trees balanced?  \n1. What is a heap?\nhow are b-trees balanced?", ["How are B-trees balanced?", "What is a heap?"]),
        ("What is Raft?\nWhat is a quorum?\nWhat is Paxos?\nWhat is ZAB?", ["What is Raft?", "What is a quorum?", "What is Paxos?"]),
        ("", []),
        ("?\n!", []),
    ],
)
def test_the_models_text_is_cleaned_to_at_most_three_distinct_questions(raw, questions):
    assert clean_condensed(raw) == questions


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


def test_a_compound_message_becomes_one_search_question_per_line():
    llm = CountingLLM("What is a zombie process?\nWhat does the scheduler do in an OS?")
    made = Condenser(llm).condense("what is a zombie process & what does the scheduler do in an OS", [])
    assert made.questions == ("What is a zombie process?", "What does the scheduler do in an OS?") and made.changed
    assert made.question == "What is a zombie process?\nWhat does the scheduler do in an OS?"
    # the query engine is given those lines: they are used as they are, with no second model call
    again = Condenser(llm).condense(made.question, [])
    assert again.questions == made.questions and again.method == "lines" and len(llm.calls) == 1


def test_question_lines_needs_two_or_three_short_lines():
    assert question_lines("What is Raft?\n\nWhat is a quorum?") == ["What is Raft?", "What is a quorum?"]
    assert question_lines("What is Raft?") == []
    assert question_lines("a\nb\nc\nd") == []
    assert question_lines("What is Raft?\n" + "word " * 30) == []


def test_a_long_message_reaches_the_model_bounded_and_a_paste_is_not_condensed():
    message = "I pasted part of my log, sorry. " + "ERROR connection reset " * 150 + " so what is a TCP reset?"
    assert MESSAGE_CHARS < len(message) <= PASTE_CHARS
    assert len(bounded_message(message)) <= MESSAGE_CHARS + 3 and bounded_message(message).endswith("what is a TCP reset?")
    llm = CountingLLM("What is a TCP reset?")
    made = Condenser(llm).condense(message, [])
    assert made.questions == ("What is a TCP reset?",) and len(llm.calls[0]) < MESSAGE_CHARS + 2000
    paste = message + " ERROR connection reset" * 5000
    made = Condenser(llm).condense(paste, HISTORY)
    assert not made.condensed and made.reason.startswith("too long to condense") and len(llm.calls) == 1


def test_condense_many_equals_one_by_one_and_skips_the_gated():
    items = [("What is a B-tree?", []), ("and why do databases use it?", HISTORY), ("Is it thread-safe?", HISTORY)]
    llm = CountingLLM("Why do databases use B-trees?")
    many = Condenser(llm).condense_many(items)
    assert len(llm.calls) == 2 and [m.condensed for m in many] == [False, True, True]
    one = [Condenser(CountingLLM("Why do databases use B-trees?")).condense(m, h) for m, h in items]
    assert [m.questions for m in many] == [m.questions for m in one]


def test_llamaindex_prompt_without_the_gate_condenses_every_later_turn_and_no_first_turn():
    llm = CountingLLM("What is a B-tree used for?")
    condenser = Condenser(llm, prompt=llamaindex_condense_messages, gate=False)
    assert not condenser.condense("hi all, long story, but what is a B-tree and a heap", []).condensed
    made = condenser.condense("How does a hash table handle collisions?", HISTORY)
    assert made.condensed and "<Follow Up Message>" in llm.calls[0] and "user: What is a B-tree?" in llm.calls[0]
