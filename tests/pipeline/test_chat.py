"""The chat engine (pipeline.chat) on the tiny system of tests/conftest.py.

Where the model is irrelevant, a counting stub LLM stands in for the condenser's LM (and, where
the prompt must be read, for the generator): `Components(config, llms=...)` puts it where the
config's LM would load. Memory bounds are checked with a whitespace tokenizer (one token a word)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ChatMessage, CompletionResponse, CompletionResponseGen, LLMMetadata, MessageRole
from llama_index.core.chat_engine.types import AgentChatResponse, BaseChatEngine
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.schema import QueryBundle

from pipeline import Components, build_chat_engine
from pipeline.chat import ChatHistoryError, ChatMemory, ChatMessageError, StreamingChatResponse, check_history, new_memory
from pipeline.engine import ArtifactMissingError
from pipeline.errors import UserFacingError
from pipeline.models import PromptTooLongError
from rewrite.prompts import CONDENSE_SYSTEM

FIRST = "What is a B-tree?"
FOLLOW_UP = "and how is it kept balanced?"
STANDALONE = "How is a B-tree kept balanced?"


class StubLLM(CustomLLM):
    """A fixed reply (streamed word by word); remembers every prompt. `fail_after`: the stream
    raises after that many words, and a whole reply is never given."""

    reply: str = ""
    calls: list = []
    fail_after: Any = None

    def __init__(self, reply: str, fail_after: Any = None) -> None:
        super().__init__()
        self.reply, self.calls, self.fail_after = reply, [], fail_after

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=4096)

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.calls.append(prompt)
        if self.fail_after is not None:
            raise RuntimeError("the model server went away")
        return CompletionResponse(text=self.reply)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        self.calls.append(prompt)

        def gen():
            text = ""
            for i, word in enumerate(self.reply.split(" ")):
                if self.fail_after is not None and i >= self.fail_after:
                    raise RuntimeError("the model server went away")
                delta = word if i == 0 else " " + word
                text += delta
                yield CompletionResponse(text=text, delta=delta)

        return gen()


def words(text: str) -> list[str]:
    return text.split()


@pytest.fixture(scope="module")
def config(tiny_config):
    """Rewriting off and one round, so that the rewriter's LM is used only by the condense step."""
    return dataclasses.replace(tiny_config, rewrite=dataclasses.replace(tiny_config.rewrite, mode="none"), agent=dataclasses.replace(tiny_config.agent, max_rounds=1))


@pytest.fixture(scope="module")
def components(config):
    return Components(config)


def stubbed(config, condense_reply=STANDALONE, answer="A B-tree stays balanced by splitting full nodes [1].", **llms):
    """Components whose condenser LM ('base': the chat condenses with the base LM unless the system
    condenses with its trained condenser, rewrite.mode condense) and generator LM (RAFT, used by
    full) are stubs."""
    condenser, generator = StubLLM(condense_reply), StubLLM(answer, **llms)
    return Components(config, llms={"base": condenser, "raft": generator}), condenser, generator


@pytest.fixture
def retrieved(monkeypatch):
    """Every query string a retriever is asked, in order."""
    seen: list[str] = []
    real = BaseRetriever.retrieve

    def spy(self, query):
        seen.append(query.query_str if isinstance(query, QueryBundle) else query)
        return real(self, query)

    monkeypatch.setattr(BaseRetriever, "retrieve", spy)
    return seen


# ------------------------------------------------------------------ the API


def test_build_chat_engine_is_a_llamaindex_chat_engine_with_a_bounded_memory(config, components):
    chat = build_chat_engine(config, "nn_answer", components=components)
    assert isinstance(chat, BaseChatEngine)
    assert isinstance(chat.memory, ChatMemory) and chat.memory.token_limit == config.chat.memory_tokens == 1024
    reply = chat.chat(FIRST)
    assert isinstance(reply, AgentChatResponse) and reply.response and reply.source_nodes
    meta = reply.metadata
    assert meta["system"] == "nn_answer" and meta["standalone_question"] == FIRST and meta["condensed"] is False
    assert meta["condense"]["reason"] == "first turn: one clean question"
    assert meta["timings"]["condense"] == 0 and meta["timings"]["total"] >= meta["timings"]["retrieve"]
    assert [(m.role, m.content) for m in chat.chat_history] == [(MessageRole.USER, FIRST), (MessageRole.ASSISTANT, reply.response)]
    assert meta["memory"]["messages"] == 2 and meta["memory"]["dropped"] == 0
    with pytest.raises(ValueError, match="unknown system 'fulll'"):
        build_chat_engine(config, "fulll")


# ------------------------------------------------------------------ memory


def test_memory_drops_the_oldest_whole_turns_past_its_token_limit():
    memory = ChatMemory(token_limit=24, tokenizer_fn=words)  # a turn is 8 words: three fit
    for i in range(6):
        memory.put_messages([ChatMessage(role=MessageRole.USER, content=f"question {i} a b"), ChatMessage(role=MessageRole.ASSISTANT, content=f"answer {i} c d")])
        assert memory._count(memory.get_all()) <= 24
    kept = memory.get_all()
    assert [m.content for m in kept] == [f"{kind} {i} {x}" for i in (3, 4, 5) for kind, x in (("question", "a b"), ("answer", "c d"))]
    assert kept[0].role == MessageRole.USER  # never an answer without its question
    assert memory.last_report == {"limit": 24, "messages": 6, "dropped": 2, "cut": False}


def test_a_turn_alone_over_the_limit_is_cut_not_lost():
    memory = ChatMemory(token_limit=50, tokenizer_fn=words)
    memory.put_messages([ChatMessage(role=MessageRole.USER, content="first question"), ChatMessage(role=MessageRole.ASSISTANT, content="first answer")])
    memory.put_messages([ChatMessage(role=MessageRole.USER, content="word " * 1000), ChatMessage(role=MessageRole.ASSISTANT, content="short answer")])
    kept = memory.get_all()
    assert [m.role for m in kept] == [MessageRole.USER, MessageRole.ASSISTANT] and kept[1].content == "short answer"
    assert kept[0].content.endswith(" …") and memory._count(kept) <= 50
    assert memory.last_report["dropped"] == 2 and memory.last_report["cut"] is True


def test_reset_empties_the_memory_and_the_next_message_is_a_first_turn(config):
    components, condenser, _ = stubbed(config)
    chat = build_chat_engine(config, "nn_answer", components=components)
    chat.chat(FIRST)
    chat.chat(FOLLOW_UP)
    assert len(chat.chat_history) == 4 and len(condenser.calls) == 1
    chat.reset()
    assert chat.chat_history == [] and chat.memory.get_all() == []
    reply = chat.chat(FOLLOW_UP)  # nothing to refer back to any more
    assert reply.metadata["condensed"] is False and reply.metadata["standalone_question"] == FOLLOW_UP
    assert len(condenser.calls) == 1


def test_two_conversations_are_kept_apart(config):
    components, condenser, _ = stubbed(config)
    alice = build_chat_engine(config, "nn_answer", components=components)
    bob = build_chat_engine(config, "nn_answer", components=components)
    alice.chat(FIRST)
    reply = bob.chat(FOLLOW_UP)  # Bob's first turn: Alice's B-tree is not his context
    assert reply.metadata["condensed"] is False and not condenser.calls
    assert [m.content for m in alice.chat_history if m.role == MessageRole.USER] == [FIRST]
    assert [m.content for m in bob.chat_history if m.role == MessageRole.USER] == [FOLLOW_UP]
    assert alice.memory is not bob.memory
    alice.reset()
    assert len(bob.chat_history) == 2


def test_one_memory_carries_a_conversation_across_systems(config):
    components, condenser, _ = stubbed(config)
    memory = new_memory(config)
    build_chat_engine(config, "nn_answer", components=components, memory=memory).chat(FIRST)
    reply = build_chat_engine(config, "rag_vanilla", components=components, memory=memory).gate(FOLLOW_UP)
    assert reply == (True, "continues the conversation: opens with 'and'") and len(memory.get_all()) == 2


# ------------------------------------------------------------------ the condense step and its gate


def test_a_standalone_first_turn_and_a_standalone_follow_up_cost_no_lm_call(config, retrieved):
    components, condenser, _ = stubbed(config)
    chat = build_chat_engine(config, "full", components=components)
    chat.chat(FIRST)
    second = chat.chat("How does a hash table handle collisions?")
    assert condenser.calls == []  # counted at the LM: the gate kept both as typed
    assert second.metadata["condensed"] is False and second.metadata["condense"]["reason"].startswith("stands alone")
    assert set(retrieved) == {FIRST, "How does a hash table handle collisions?"}


def test_a_follow_up_is_condensed_and_retrieval_reranking_and_generation_read_the_standalone_question(config, retrieved, monkeypatch):
    components, condenser, generator = stubbed(config)
    reranked: list[str] = []
    reranker = components.reranker()
    real = type(reranker).postprocess_nodes
    monkeypatch.setattr(type(reranker), "postprocess_nodes", lambda self, nodes, query_bundle=None, query_str=None: reranked.append(query_str) or real(self, nodes, query_bundle=query_bundle, query_str=query_str))
    chat = build_chat_engine(config, "full", components=components)
    first = chat.chat(FIRST)
    retrieved.clear()
    reply = chat.chat(FOLLOW_UP)

    assert len(condenser.calls) == 1 and CONDENSE_SYSTEM in condenser.calls[0]
    assert f"User: {FIRST}" in condenser.calls[0] and f"Last message: {FOLLOW_UP}" in condenser.calls[0]
    meta = reply.metadata
    assert meta["standalone_question"] == STANDALONE and meta["condensed"] is True
    assert meta["condense"]["method"] == "llm" and meta["condense"]["reason"] == "continues the conversation: opens with 'and'"
    assert meta["timings"]["condense"] >= 0 and "retrieve" in meta["timings"]
    assert retrieved and set(retrieved) == {STANDALONE}  # the retriever got the standalone question
    assert reranked[-1] == STANDALONE
    assert STANDALONE in generator.calls[-1] and FOLLOW_UP not in generator.calls[-1]
    # the transcript keeps the user's own words; the standalone question rides along
    user_turns = [m for m in chat.chat_history if m.role == MessageRole.USER]
    assert [m.content for m in user_turns] == [FIRST, FOLLOW_UP]
    assert user_turns[1].additional_kwargs["standalone_question"] == STANDALONE
    assert [m.content for m in chat.chat_history if m.role == MessageRole.ASSISTANT] == [first.response, reply.response]


def test_condensing_off_searches_the_message_as_typed(config, retrieved):
    off = dataclasses.replace(config, chat=dataclasses.replace(config.chat, condense=False))
    components, condenser, _ = stubbed(off)
    chat = build_chat_engine(off, "nn_answer", components=components)
    chat.chat(FIRST)
    reply = chat.chat(FOLLOW_UP)
    assert not condenser.calls and reply.metadata["condense"]["reason"] == "condensing off (chat.condense: false)"
    assert retrieved[-1] == FOLLOW_UP


def test_the_trained_condenser_serves_a_system_that_condenses_with_it_and_a_missing_one_names_its_command(config, tmp_path):
    from pipeline.chat import default_condenser
    from pipeline.systems import get_system

    trained = dataclasses.replace(config, rewrite=dataclasses.replace(config.rewrite, mode="condense", condense_adapter=config.rewrite.adapter))
    condenser, base = StubLLM(STANDALONE), StubLLM("not me")
    components = Components(trained, llms={"condenser": condenser, "base": base})
    assert default_condenser(trained, get_system("full", trained), components).llm is condenser
    assert default_condenser(trained, get_system("full-base-rewriter", trained), components).llm is base  # the zero-shot ablation
    assert default_condenser(trained, get_system("nn_answer", trained), components).llm is base  # no rewriter of its own

    missing = dataclasses.replace(trained, rewrite=dataclasses.replace(trained.rewrite, condense_adapter=str(tmp_path / "no-condenser")))
    lazy = default_condenser(missing, get_system("full", missing), Components(missing))  # builds nothing yet
    with pytest.raises(ArtifactMissingError, match="the condenser adapter is not built") as raised:
        lazy.llm
    assert str(tmp_path / "no-condenser") in str(raised.value) and "finetune.condenser" in str(raised.value)


# ------------------------------------------------------------------ streaming and async


def test_stream_chat_yields_tokens_and_ends_with_the_same_text_as_chat(config, components):
    streamed = build_chat_engine(config, "rag_vanilla", components=components).stream_chat(FIRST)
    assert isinstance(streamed, StreamingChatResponse) and streamed.source_nodes
    assert streamed.metadata["standalone_question"] == FIRST
    tokens = list(streamed.response_gen)
    assert tokens and all(isinstance(t, str) for t in tokens)
    chat = build_chat_engine(config, "rag_vanilla", components=components)
    once = chat.chat(FIRST)  # greedy decoding: the same text, streamed or not
    assert "".join(tokens).strip() == streamed.response == once.response
    assert "generate" in streamed.metadata["timings"] and streamed.metadata["memory"]["messages"] == 2


def test_a_stream_reaches_the_memory_only_when_it_ends(config):
    components, _, _ = stubbed(config)
    chat = build_chat_engine(config, "full", components=components)
    chat.chat(FIRST)
    before = chat.chat_history
    stream = chat.stream_chat("How does a hash table handle collisions?")
    assert chat.chat_history == before  # not answered yet
    tokens = list(stream.response_gen)
    assert len(tokens) >= 2, tokens  # streamed in pieces, not at the end
    text = "".join(tokens)
    assert text.startswith("A B-tree stays balanced") and len(chat.chat_history) == 4
    assert chat.chat_history[-1].content == stream.response


def test_achat_and_astream_chat(config, components):
    chat = build_chat_engine(config, "rag_vanilla", components=components)
    sync = build_chat_engine(config, "rag_vanilla", components=components).chat(FIRST)

    async def converse():
        reply = await chat.achat(FIRST)
        streamed = await chat.astream_chat("How does a hash table handle collisions?")
        tokens = [t async for t in streamed.async_response_gen()]
        return reply, streamed, tokens

    reply, streamed, tokens = asyncio.run(converse())
    assert reply.response == sync.response and reply.metadata["standalone_question"] == FIRST
    assert tokens and "".join(tokens).strip() == streamed.response
    assert [m.content for m in chat.chat_history] == [FIRST, reply.response, "How does a hash table handle collisions?", streamed.response]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("message", "error"), [("", "the chat message is empty"), ("  \n\t", "the chat message is empty"), (None, "must be text \\(a str\\); got NoneType"), (42, "got int 42")])
def test_an_empty_or_non_text_message_is_refused_and_the_memory_kept(config, message, error):
    components, condenser, _ = stubbed(config)
    chat = build_chat_engine(config, "full", components=components)
    chat.memory.set([ChatMessage(role=MessageRole.USER, content=FIRST), ChatMessage(role=MessageRole.ASSISTANT, content="A tree.")])
    for call in (chat.chat, chat.stream_chat, lambda m: asyncio.run(chat.achat(m))):
        with pytest.raises(ChatMessageError, match=error) as raised:
            call(message)
        assert isinstance(raised.value, UserFacingError) and isinstance(raised.value, ValueError)
    assert [m.content for m in chat.chat_history] == [FIRST, "A tree."] and not condenser.calls


@pytest.mark.parametrize(
    ("history", "error"),
    [
        ("What is a B-tree?", r"chat_history must be a list of turns; got str 'What is a B-tree\?'"),
        ({"role": "user", "content": "hi"}, "chat_history must be a list of turns; got dict"),
        ([1, 2], r"chat_history\[0\] is not a turn: got int 1"),
        ([{"role": "bot", "content": "hi"}], r"chat_history\[0\] has role 'bot'; use 'user', 'assistant' or 'system'"),
        ([{"role": "user", "content": ["hi"]}], r"chat_history\[0\]\['content'\] must be text; got list"),
    ],
)
def test_a_history_that_is_not_a_list_of_turns_is_refused_naming_the_fix(config, history, error):
    components, _, _ = stubbed(config)
    chat = build_chat_engine(config, "nn_answer", components=components)
    chat.chat(FIRST)
    before = chat.chat_history
    with pytest.raises(ChatHistoryError, match=error) as raised:
        chat.chat(FOLLOW_UP, chat_history=history)
    assert isinstance(raised.value, UserFacingError)
    assert "chat_history[" in str(raised.value) or "Fix: pass a list of turns" in str(raised.value)
    assert chat.chat_history == before


def test_a_passed_history_longer_than_the_memory_is_cut_to_its_newest_turns(config):
    small = dataclasses.replace(config, chat=dataclasses.replace(config.chat, memory_tokens=40))
    components, condenser, _ = stubbed(small)
    chat = build_chat_engine(small, "nn_answer", components=components, tokenizer_fn=words)
    history = [("Question number %d about trees and hashing?" % i, "Answer number %d with a few more words." % i) for i in range(30)]
    reply = chat.chat(FOLLOW_UP, chat_history=history)
    assert reply.metadata["condensed"] is True and reply.metadata["memory"]["history_dropped"] > 50
    shown = condenser.calls[0]
    assert "Question number 29" in shown and "Question number 0 " not in shown  # the condenser read the newest turns only
    kept = chat.chat_history
    assert chat.memory._count(kept) <= 40 and kept[-2].content == FOLLOW_UP and kept[0].role == MessageRole.USER


def test_a_history_may_be_chat_messages_role_dicts_or_question_answer_pairs():
    history = check_history([ChatMessage(role=MessageRole.USER, content="q1"), {"role": "assistant", "content": "a1"}, ("q2", "a2"), ["q3", None]])
    assert [(m.role, m.content) for m in history] == [
        (MessageRole.USER, "q1"), (MessageRole.ASSISTANT, "a1"), (MessageRole.USER, "q2"), (MessageRole.ASSISTANT, "a2"), (MessageRole.USER, "q3"),
    ]


LONG = ("How does a hash table handle collisions when many keys share a bucket? " * 1500)[:100_000]


def test_a_100kb_message_is_answered_within_bounds_or_refused_clearly_and_the_memory_survives(config, components):
    stubs, condenser, _ = stubbed(config)
    memory = new_memory(config)  # the tiny LM's own tokenizer
    chat = build_chat_engine(config, "nn_answer", components=stubs, memory=memory)
    chat.chat(FIRST)
    reply = chat.chat(LONG)  # a paste: no LM; retrieval reads its first retrieve.max_query_chars
    assert "collision" in reply.response.lower() and reply.metadata["condense"]["reason"].startswith("too long to condense") and not condenser.calls
    assert reply.metadata["memory"]["cut"] is True and memory._count(memory.get_all()) <= config.chat.memory_tokens
    assert memory.get_all()[0].content.startswith("How does a hash table") and memory.get_all()[0].content.endswith(" …")
    before = memory.get_all()
    with pytest.raises(PromptTooLongError, match="context window") as raised:  # an LM system: the generator's clear refusal
        build_chat_engine(config, "rag_vanilla", components=components, memory=memory).chat(LONG)  # the real tiny LM
    assert isinstance(raised.value, UserFacingError) and "shorten the question" in str(raised.value)
    assert memory.get_all() == before


@pytest.mark.parametrize("message", ["哈希表如何处理冲突？", "🙂🚀🔥"])
def test_a_message_in_another_script_is_condensed_by_the_model_and_answered(config, message):
    components, condenser, _ = stubbed(config, condense_reply="How does a hash table handle collisions?")
    chat = build_chat_engine(config, "nn_answer", components=components)
    chat.chat("What is a hash table?")
    reply = chat.chat(message)
    assert len(condenser.calls) == 1 and reply.metadata["condensed"] is True and "Latin script" in reply.metadata["condense"]["reason"]
    assert reply.metadata["standalone_question"] == "How does a hash table handle collisions?" and reply.source_nodes
    assert chat.chat_history[-2].content == message


def test_a_turn_that_fails_midway_leaves_the_memory_as_it_was(config):
    components, _, _ = stubbed(config, answer="one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen", fail_after=12)
    chat = build_chat_engine(config, "full", components=components)
    chat.memory.set([ChatMessage(role=MessageRole.USER, content=FIRST), ChatMessage(role=MessageRole.ASSISTANT, content="A tree.")])
    before = chat.chat_history
    stream = chat.stream_chat("How does a hash table handle collisions?")
    with pytest.raises(RuntimeError, match="went away"):
        for _ in stream.response_gen:
            pass
    assert chat.chat_history == before
    with pytest.raises(RuntimeError, match="went away"):
        chat.chat("How does a hash table handle collisions?")
    assert chat.chat_history == before
