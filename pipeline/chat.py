"""`build_chat_engine(config, system=NAME)`: a conversation with any named system, as a LlamaIndex chat engine.

    from pipeline import build_chat_engine, load_config
    chat = build_chat_engine(load_config(), system="full")
    chat.chat("What is a B-tree?")                          # AgentChatResponse: response, source_nodes, metadata
    reply = chat.chat("and why do databases use it?")     # condensed: "Why do databases use B-trees?"
    reply.metadata["standalone_question"], reply.metadata["condensed"]
    for token in chat.stream_chat("how is it kept balanced?").response_gen: print(token, end="")
    await chat.achat("..."); await chat.astream_chat("...")
    chat.reset()                                            # a new conversation

One turn: the message (+ the conversation in memory, or the `chat_history` passed) -> the condense
step of rewrite/ (`rewrite.Condenser`: its gate keeps a clean question as typed, with no LM call;
a follow-up, a wrapped or a joined message is rewritten into its standalone search question(s) by
the trained condenser at rewrite.condense_adapter for a system that condenses with it under
rewrite.mode condense, else by the base LM) -> the system's query engine
(`build_query_engine(config, system)`) answers the standalone question(s): retrieval, the reranker
and the generator all read them, each ask retrieved and reranked on its own. The memory keeps the user's own words (a condensed question rides
along in the message's `additional_kwargs["standalone_question"]`) and the answers.

Memory: a `ChatMemory` (LlamaIndex's `ChatMemoryBuffer` whose store itself is bounded) of
chat.memory_tokens tokens, counted with the generator's tokenizer; past the bound the oldest turns
are dropped, and a single turn over it alone is cut. A turn is written to memory only once it has
an answer (for a stream: once the stream has ended), so a failed turn leaves the memory as it was.

`response.metadata` = the query engine's metadata (system, rounds, timings, ...) plus
`standalone_question`, `condensed` (bool), `condense` (the gate's reason, the method, the LM's raw
text, seconds), `timings["condense"]` (and `total` covering the condense step) and `memory` (the
bound, messages kept, messages dropped and whether a message was cut, and `history_dropped`: the
oldest messages of a passed `chat_history` over the bound, dropped before condensing).

Bad input: an empty or non-text message raises `ChatMessageError`, a `chat_history` that is not a
list of turns `ChatHistoryError` (both `UserFacingError`s naming the value and the fix), before
anything loads. A message of any length or language is answered as the query engine answers a
question (docs/chat-engine.md).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, Callable, Dict, Generator, List, Optional, Sequence

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.chat_engine.types import AgentChatResponse, BaseChatEngine, StreamingAgentChatResponse
from llama_index.core.memory import BaseMemory, ChatMemoryBuffer
from llama_index.core.tools import ToolOutput

from pipeline.config import Config, ConfigError
from pipeline.engine import Components, QuestionError, RagftQueryEngine, build_query_engine
from pipeline.errors import UserFacingError
from pipeline.systems import SystemSpec, get_system
from rewrite.condense import Condensed, Condenser

logger = logging.getLogger(__name__)

CUT_MARK = " …"
ROLES = {"user": MessageRole.USER, "assistant": MessageRole.ASSISTANT, "system": MessageRole.SYSTEM}


class ChatMessageError(QuestionError):
    """The chat message cannot be sent (empty, only whitespace, or not text)."""


class ChatHistoryError(UserFacingError, ValueError):
    """A `chat_history` that is not a list of turns; the message names the bad item and the fix."""


# ------------------------------------------------------------------------------------------------
# tokens: the generator's tokenizer, loaded once per model (not chat state: shared read-only)
# ------------------------------------------------------------------------------------------------

_TOKENIZERS: dict[str, Any] = {}
_TOKENIZER_LOCK = threading.Lock()  # a fast tokenizer used by two threads at once fails ('Already borrowed')


def _load_counter(config: Config) -> Callable[[str], list]:
    if config.generator.backend == "hf":
        try:
            from pipeline.models import check_model_source, resolve_model

            path = resolve_model(check_model_source(config, config.generator.model, "generator.model"), allow_download=False, convert_dir=config.generator.convert_dir)
            with _TOKENIZER_LOCK:
                if path not in _TOKENIZERS:
                    from transformers import AutoTokenizer

                    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.generator.trust_remote_code)
                    tokenizer.model_max_length = 1 << 30  # counting only: no 'sequence too long' warning for a pasted document
                    _TOKENIZERS[path] = tokenizer
                tokenizer = _TOKENIZERS[path]

            def count(text: str) -> list:
                with _TOKENIZER_LOCK:
                    return tokenizer(text, add_special_tokens=False)["input_ids"]

            return count
        except Exception as exc:  # the chat still works; its bound is then approximate
            logger.warning("chat memory: cannot load the tokenizer of %s (%s); counting tokens with tiktoken instead", config.generator.model, exc)
    from llama_index.core.utils import get_tokenizer

    return get_tokenizer()


def generator_token_counter(config: Config) -> Callable[[str], list]:
    """`text -> tokens` with the generator's tokenizer (tiktoken's where it has none locally, e.g.
    generator.backend=openai), loaded on the first count."""
    loaded: list[Callable[[str], list]] = []

    def count(text: str) -> list:
        if not loaded:
            loaded.append(_load_counter(config))
        return loaded[0](text)

    return count


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------


def _turns(messages: Sequence[ChatMessage]) -> list[list[ChatMessage]]:
    """Messages -> turns: each user message with the replies after it (leading replies: a turn)."""
    turns: list[list[ChatMessage]] = []
    for message in messages:
        if message.role == MessageRole.USER or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns


def _with_text(message: ChatMessage, text: str) -> ChatMessage:
    return ChatMessage(role=message.role, content=text, additional_kwargs=dict(message.additional_kwargs))


class ChatMemory(ChatMemoryBuffer):
    """LlamaIndex's ChatMemoryBuffer whose store itself stays within `token_limit`: writing drops
    the oldest turns (a user message and its answers) past the limit, and cuts the messages of a
    turn that alone is over it (longest first, marked with ' …'). `last_report` says what the
    last write dropped or cut."""

    last_report: Dict[str, Any] = {}

    @classmethod
    def class_name(cls) -> str:
        return "RagftChatMemory"

    def _count(self, messages: Sequence[ChatMessage]) -> int:
        return self._token_count_for_messages(list(messages))

    def fit(self, messages: Sequence[ChatMessage]) -> tuple[list[ChatMessage], int, bool]:
        """(the messages within the limit, how many of the oldest were dropped, whether a message
        was cut). Pure: the memory is not changed."""
        turns = _turns(list(messages))
        dropped = 0
        while len(turns) > 1 and self._count([m for turn in turns for m in turn]) > self.token_limit:
            dropped += len(turns.pop(0))
        kept = [m for turn in turns for m in turn]
        cut = False
        for _ in range(64):  # a turn alone over the limit: cut its longest message until it fits
            total = self._count(kept)
            if total <= self.token_limit or not kept:
                break
            longest = max(range(len(kept)), key=lambda i: len(kept[i].content or ""))
            text = kept[longest].content or ""
            if not text:
                break
            keep = max(0, int(len(text) * self.token_limit / total * 0.9) - len(CUT_MARK))
            keep = min(keep, len(text) - len(CUT_MARK) - 1)
            kept[longest] = _with_text(kept[longest], text[: max(0, keep)].rstrip() + CUT_MARK)
            cut = True
        return kept, dropped, cut

    def _bound(self) -> None:
        messages = list(super().get_all())
        kept, dropped, cut = self.fit(messages)
        if dropped or cut:
            super().set(kept)
        self.last_report = {"limit": self.token_limit, "messages": len(kept), "dropped": dropped, "cut": cut}

    def put(self, message: ChatMessage) -> None:
        super().put(message)
        self._bound()

    def put_messages(self, messages: List[ChatMessage]) -> None:
        for message in messages:
            super().put(message)
        self._bound()

    def set(self, messages: List[ChatMessage]) -> None:
        super().set(list(messages))
        self._bound()

    def get_all(self) -> List[ChatMessage]:
        return list(super().get_all())  # a copy: the store's own list never leaks

    async def aput(self, message: ChatMessage) -> None:
        await asyncio.to_thread(self.put, message)

    async def aput_messages(self, messages: List[ChatMessage]) -> None:
        await asyncio.to_thread(self.put_messages, messages)

    async def aset(self, messages: List[ChatMessage]) -> None:
        await asyncio.to_thread(self.set, messages)

    async def aget_all(self) -> List[ChatMessage]:
        return self.get_all()


def new_memory(config: Config, *, tokenizer_fn: Optional[Callable[[str], list]] = None, chat_history: Optional[Sequence[Any]] = None) -> ChatMemory:
    """An empty (or `chat_history`) memory of chat.memory_tokens tokens: one per conversation."""
    memory = ChatMemory(token_limit=config.chat.memory_tokens, tokenizer_fn=tokenizer_fn or generator_token_counter(config))
    if chat_history:
        memory.set(check_history(chat_history))
    return memory


# ------------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_message(message: Any) -> str:
    if isinstance(message, ChatMessage):
        message = message.content
    if not isinstance(message, str):
        raise ChatMessageError(f"the chat message must be text (a str); got {type(message).__name__} {_show(message)}")
    if not message.strip():
        raise ChatMessageError("the chat message is empty; type a question with some text in it")
    return message.strip()


HISTORY_FIX = "pass a list of turns, oldest first: ChatMessage objects, {'role': 'user' | 'assistant', 'content': str} dicts or (question, answer) pairs; or None to use the engine's memory"


def check_history(history: Any) -> list[ChatMessage]:
    """A chat_history -> ChatMessages; ChatHistoryError naming the first bad item otherwise."""
    if isinstance(history, (str, bytes, dict)) or not isinstance(history, (list, tuple)):
        raise ChatHistoryError(f"chat_history must be a list of turns; got {type(history).__name__} {_show(history)}. Fix: {HISTORY_FIX}")
    messages: list[ChatMessage] = []
    for i, item in enumerate(history):
        if isinstance(item, ChatMessage):
            if item.role not in ROLES.values():
                raise ChatHistoryError(f"chat_history[{i}] has role {item.role.value!r}; use user, assistant or system")
            messages.append(item)
        elif isinstance(item, dict):
            role, content = item.get("role"), item.get("content")
            if role not in ROLES:
                raise ChatHistoryError(f"chat_history[{i}] has role {_show(role)}; use 'user', 'assistant' or 'system'")
            if not isinstance(content, str):
                raise ChatHistoryError(f"chat_history[{i}]['content'] must be text; got {type(content).__name__} {_show(content)}")
            messages.append(ChatMessage(role=ROLES[role], content=content))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str) and (item[1] is None or isinstance(item[1], str)):
            messages.append(ChatMessage(role=MessageRole.USER, content=item[0]))
            if item[1] is not None:
                messages.append(ChatMessage(role=MessageRole.ASSISTANT, content=item[1]))
        else:
            raise ChatHistoryError(f"chat_history[{i}] is not a turn: got {type(item).__name__} {_show(item)}. Fix: {HISTORY_FIX}")
    return messages


# ------------------------------------------------------------------------------------------------
# the chat engine
# ------------------------------------------------------------------------------------------------


@dataclass
class StreamingChatResponse(StreamingAgentChatResponse):
    """LlamaIndex's streaming chat response with the turn's `metadata` (as AgentChatResponse has).
    Iterate `response_gen` (or `async_response_gen()` after astream_chat); the turn is written to
    memory when the stream ends, and `metadata` then gains the generate time and `memory`."""

    metadata: Dict[str, Any] = field(default_factory=dict)


@dataclass
class _Turn:
    message: str
    history: list[ChatMessage]  # what the condense step reads (within the memory bound)
    replace: bool  # a chat_history was passed: it becomes the memory, with this turn appended
    history_dropped: int = 0
    started: float = field(default_factory=time.perf_counter)


def default_condenser(config: Config, spec: SystemSpec, components: Components) -> Condenser:
    """The condense step of `config`: the trained condenser (rewrite.condense_adapter) for a system
    that rewrites with its trained rewriter under rewrite.mode condense (eval.compare builds it
    then), else the base LM with the same prompt."""
    trained = spec.rewrite and spec.rewriter_adapter and config.rewrite.mode == "condense" and config.rewrite.condense_adapter
    kind = "condenser" if trained else "base"
    return Condenser(lambda: components.llm(kind), max_new_tokens=config.rewrite.max_new_tokens, max_questions=config.rewrite.n_queries, enabled=config.chat.condense)


class RagftChatEngine(BaseChatEngine):
    """A named system as a LlamaIndex chat engine; see the module docstring. One per conversation."""

    def __init__(self, spec: SystemSpec, components: Components, memory: BaseMemory, condenser: Condenser) -> None:
        self.spec = spec
        self.components = components
        self.config = components.config
        self._memory = memory
        self._condenser = condenser
        self._engines: dict[bool, RagftQueryEngine] = {}
        self._write_lock = threading.Lock()

    # ---- state -------------------------------------------------------------------------------------

    @property
    def memory(self) -> BaseMemory:
        return self._memory

    @property
    def chat_history(self) -> List[ChatMessage]:
        return list(self._memory.get_all())

    def reset(self) -> None:
        """Start a new conversation: the memory is emptied."""
        with self._write_lock:
            self._memory.reset()

    def gate(self, message: str, chat_history: Optional[Sequence[Any]] = None) -> tuple[bool, str]:
        """(whether this message would be condensed, why): the gate alone, no model, no change."""
        turn = self._begin(message, chat_history)
        return self._condenser.gate(turn.message, turn.history)

    def query_engine(self, streaming: bool = False) -> RagftQueryEngine:
        if streaming not in self._engines:
            self._engines[streaming] = build_query_engine(self.config, self.spec.name, components=self.components, streaming=streaming)
        return self._engines[streaming]

    # ---- one turn ------------------------------------------------------------------------------------

    def _begin(self, message: Any, chat_history: Optional[Sequence[Any]]) -> _Turn:
        text = check_message(message)
        if chat_history is None:
            return _Turn(text, list(self._memory.get(input=text)), replace=False)
        history = check_history(chat_history)
        if isinstance(self._memory, ChatMemory):
            kept, dropped, _cut = self._memory.fit(history)
        else:
            kept, dropped = history, 0
        return _Turn(text, kept, replace=True, history_dropped=dropped)

    def _metadata(self, turn: _Turn, condensed: Condensed, query_metadata: Optional[dict]) -> dict[str, Any]:
        metadata = dict(query_metadata or {})
        timings = metadata.setdefault("timings", {})  # the query engine's own dict: a stream adds its generate time there
        timings["condense"] = round(condensed.seconds, 6)
        timings["total"] = round(time.perf_counter() - turn.started, 6)
        metadata.update(standalone_question=condensed.question, condensed=condensed.condensed, condense=condensed.as_dict())
        metadata["memory"] = {"history_dropped": turn.history_dropped}
        return metadata

    def _commit(self, turn: _Turn, condensed: Condensed, answer: str, metadata: dict[str, Any]) -> None:
        """Write the finished turn: the user's words (with the standalone question) and the answer."""
        # the standalone question rides along only where it differs (a condensed one is short)
        extra = {"standalone_question": condensed.question} if condensed.question != turn.message else {}
        user = ChatMessage(role=MessageRole.USER, content=turn.message, additional_kwargs=extra)
        assistant = ChatMessage(role=MessageRole.ASSISTANT, content=answer)
        with self._write_lock:
            if turn.replace:
                self._memory.set([*turn.history, user, assistant])
            else:
                self._memory.put_messages([user, assistant])
        report = dict(getattr(self._memory, "last_report", {}) or {})
        metadata["memory"] = {**report, "history_dropped": turn.history_dropped}

    def _condense(self, turn: _Turn) -> Condensed:
        """The turn's condense step; a rewrite is handed to the components so that a query engine
        under rewrite.mode condense searches it as the chat wrote it, without rewriting it again."""
        condensed = self._condenser.condense(turn.message, turn.history)
        if condensed.condensed:
            self.components.remember_condensed(self.spec.rewriter_adapter, condensed)
        return condensed

    @staticmethod
    def _tool_output(question: str, response: Any, text: str) -> ToolOutput:
        return ToolOutput(content=text, tool_name="query_engine", raw_input={"query": question}, raw_output=response)

    def chat(self, message: str, chat_history: Optional[List[ChatMessage]] = None) -> AgentChatResponse:
        turn = self._begin(message, chat_history)
        condensed = self._condense(turn)
        response = self.query_engine().query(condensed.question)
        return self._finish(turn, condensed, response)

    async def achat(self, message: str, chat_history: Optional[List[ChatMessage]] = None) -> AgentChatResponse:
        turn = self._begin(message, chat_history)
        condensed = await asyncio.to_thread(self._condense, turn)
        response = await self.query_engine().aquery(condensed.question)
        return self._finish(turn, condensed, response)

    def _finish(self, turn: _Turn, condensed: Condensed, response: Any) -> AgentChatResponse:
        text = str(response.response or "")
        metadata = self._metadata(turn, condensed, response.metadata)
        self._commit(turn, condensed, text, metadata)
        return AgentChatResponse(response=text, sources=[self._tool_output(condensed.question, response, text)], source_nodes=list(response.source_nodes), metadata=metadata)

    def stream_chat(self, message: str, chat_history: Optional[List[ChatMessage]] = None) -> StreamingChatResponse:
        """Condense and retrieve now; the answer streams from `response_gen`. The turn reaches the
        memory when the stream has ended (a stream stopped or failed midway leaves it out)."""
        turn = self._begin(message, chat_history)
        condensed = self._condense(turn)
        response = self.query_engine(streaming=True).query(condensed.question)
        metadata = self._metadata(turn, condensed, response.metadata)

        def stream() -> Generator[ChatResponse, None, None]:
            text = ""
            for delta in response.response_gen:
                text += delta
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)
            self._end_stream(turn, condensed, text, metadata)

        return StreamingChatResponse(chat_stream=stream(), sources=[self._tool_output(condensed.question, response, "")], source_nodes=list(response.source_nodes), metadata=metadata, is_writing_to_memory=False)

    async def astream_chat(self, message: str, chat_history: Optional[List[ChatMessage]] = None) -> StreamingChatResponse:
        """stream_chat for an event loop: iterate `async_response_gen()`."""
        turn = self._begin(message, chat_history)
        condensed = await asyncio.to_thread(self._condense, turn)
        response = await self.query_engine(streaming=True).aquery(condensed.question)
        metadata = self._metadata(turn, condensed, response.metadata)
        done = object()

        async def stream() -> AsyncGenerator[ChatResponse, None]:
            deltas = iter(response.response_gen)
            text = ""
            while True:
                delta = await asyncio.to_thread(next, deltas, done)  # the LM streams in a worker thread
                if delta is done:
                    break
                text += delta
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)
            await asyncio.to_thread(self._end_stream, turn, condensed, text, metadata)

        return StreamingChatResponse(achat_stream=stream(), sources=[self._tool_output(condensed.question, response, "")], source_nodes=list(response.source_nodes), metadata=metadata, is_writing_to_memory=False)

    def _end_stream(self, turn: _Turn, condensed: Condensed, text: str, metadata: dict[str, Any]) -> None:
        metadata["timings"]["total"] = round(time.perf_counter() - turn.started, 6)
        self._commit(turn, condensed, text.strip(), metadata)


def build_chat_engine(
    config: Config,
    system: str = "full",
    *,
    components: Optional[Components] = None,
    memory: Optional[BaseMemory] = None,
    condenser: Optional[Condenser] = None,
    tokenizer_fn: Optional[Callable[[str], list]] = None,
) -> RagftChatEngine:
    """The chat engine of a named system (pipeline.systems). Cheap: models load on first use.

    `components`: share models and stores with other engines (one Components per config).
    `memory`: the conversation to continue (default: a new `ChatMemory` of chat.memory_tokens tokens,
    counted with `tokenizer_fn`, by default the generator's tokenizer); pass one memory to
    engines of several systems to switch systems within a conversation. `condenser`: a
    `rewrite.Condenser` to use instead of the configured one (see `default_condenser`)."""
    if not isinstance(config, Config):
        raise ConfigError(f"build_chat_engine needs a Config from pipeline.load_config; got {type(config).__name__}")
    spec = get_system(system, config)
    if components is not None and components.config is not config and components.config != config:
        raise ConfigError("the shared components were built for another config; build one Components per config")
    if memory is not None and not isinstance(memory, BaseMemory):
        raise ConfigError(f"build_chat_engine(memory=...) needs a LlamaIndex memory (e.g. pipeline.chat.new_memory(config)); got {type(memory).__name__}")
    components = components or Components(config)
    memory = memory if memory is not None else new_memory(config, tokenizer_fn=tokenizer_fn)
    return RagftChatEngine(spec, components, memory, condenser or default_condenser(config, spec, components))
