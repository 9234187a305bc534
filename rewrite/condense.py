"""`Condenser`: a conversation's last message -> one standalone search question (the chat's rewrite).

    from rewrite import Condenser, needs_condensing
    condenser = Condenser(llm)                      # llm: a LlamaIndex LLM, or a zero-arg loader
    made = condenser.condense("and why do databases use it?", history)   # history: ChatMessages, oldest first
    made.question        # "Why do databases use B-trees?" (the LM's rewrite), or the message as typed
    made.condensed       # whether the gate sent it to the LM
    made.reason          # the gate's reason, e.g. "refers back: 'it'"

The gate (`needs_condensing`) decides, with no model, whether a message needs rewriting to be
searched well; only then is the LM called. Its rules, in order (the first that applies decides):

0. longer than `PASTE_CHARS` (4000) characters: a paste, used as typed (retrieval reads its first
   retrieve.max_query_chars; an LM system refuses it clearly when it overflows the context window);
1. no earlier user turn (a first turn, or after `reset()`): standalone when it reads as one clean
   question (at most `CLEAN_MAX_WORDS` words, one sentence, no second ask joined by "and", "also",
   "plus", "+", "&", "vs" or a comma); otherwise the LM extracts the ask(s): a long message may
   wrap its question in context and fluff (verbose), a joined one may ask two things (compound);
2. longer than `LONG_MESSAGE_CHARS` (400) characters: rewritten, a long follow-up wraps its ask;
3. fewer than half of its letters in Latin script (another script; or no letter at all, only emoji
   and punctuation): the word lists below are English, so the gate cannot tell and the LM decides;
4. opens with a continuation ("and", "but", "also", "so", "what about", "how about", "compared
   to", "tell me more", "for example", ...): follow-up;
5. holds a word that refers back: a personal pronoun (it, its, they, them, their, he, she, ...),
   this, these, those, "that" where it points (first or last word, or after a verb or
   preposition: "how does that work", "what about that"; not the relative "a lock that threads
   share"), "which one", "the former / latter / above", "you said / mentioned", "your answer":
   follow-up;
6. elliptical: no content word besides question and filler words ("why?", "how so?", "give me an
   example", "explain further"), or at most four words opening with a preposition ("in Python?",
   "for strings?"): follow-up;
7. not one clean question by rule 1's test (several sentences, a second ask joined on): the LM;
8. otherwise: standalone (used as typed, no LM call).

Messages in other Latin-script languages rarely match the English lists and mostly pass as
standalone (rule 7); messages in other scripts go to the LM (rule 3).

The condense prompt (rewrite.prompts.condense_messages) shows the conversation (the user's turns,
each answer cut to 300 characters) and the last message (its first and last `MESSAGE_CHARS` / 2
characters when longer). The LM writes one search question, or one per line for a message that
asks several things (`Condensed.questions`, at most `max_questions`); each line is cleaned (labels,
numbering and quotes stripped). When nothing usable remains, or the prompt would not fit the
model's context window, the search question is the previous question followed by the message
(method `fallback`), never an error. The trained condenser (python -m finetune.condenser) is a
LoRA adapter on the same base model with the same prompt (rewrite.condense_adapter): it replaces
the LM, not this code.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

from llama_index.core.base.llms.types import ChatMessage, MessageRole

from pipeline.models import PromptTooLongError
from rewrite.prompts import condense_messages
from rewrite.rewriter import resolve_llm

LONG_MESSAGE_CHARS = 400
CLEAN_MAX_WORDS = 24  # the seed's clean questions have at most 16 words; the verbose ones at least ~30
MESSAGE_CHARS = 2000  # of a longer message, the prompt shows the first and last halves
PASTE_CHARS = 4000  # longer is a paste, not a question: guessing its ask from a part would answer something else
MAX_QUESTION_CHARS = 400  # a standalone question longer than this is cut: it is a search query
FALLBACK_PREVIOUS_CHARS = 300

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_LETTER = re.compile(r"[^\W\d_]")
_LATIN_LETTER = re.compile(r"[A-Za-z\u00C0-\u024F]")

PRONOUNS = frozenset("it its itself they them their theirs themselves he him his himself she her hers herself this these those".split())
# "that" refers back after these (a verb or a preposition), not after a noun (a relative clause)
THAT_AFTER = frozenset("about of with for in on to from into between than like is was are were be does do did explain describe mean means meant use using used why how".split())
_REFERRING_PHRASES = re.compile(
    r"\b(?:which|that|this|the other|the first|the second|the last|the same|each) ones?\b"
    r"|\bthe (?:former|latter|above|aforementioned|previous one|last one|same thing)\b"
    r"|\b(?:you|u) (?:said|say|mentioned|meant|wrote|described|explained)\b"
    r"|\byour (?:last |previous |first )?(?:answer|reply|example|explanation)\b"
    r"|\bas (?:above|before|mentioned)\b",
)
_OPENERS = re.compile(
    r"^(?:and|but|also|or|so|then|plus|besides|instead|what about|how about|what else|why not|how come|"
    r"same (?:for|with)|compared (?:to|with)|versus|vs\.?|more on|tell me more|go on|continue|elaborate|"
    r"for example|for instance|any other|anything else|another example)\b"
)
PREPOSITIONS = frozenset("in on for with without under using inside within vs versus like from to by at than via over".split())
# words that carry no subject: a message made only of these cannot stand alone
FILLER = frozenset(
    "why how what when where which who whom whose so come more please detail details detailed example examples explain "
    "elaborate further again exactly really ok okay yes no sure thanks thank you go on continue else other another one ones "
    "is are was were be been does do did can could would should will shall may might must that this it the a an me us tell "
    "about some any give show mean meant means difference differ same than i we our my more less better worse faster slower "
    "true false right wrong correct also still though then and or but not".split()
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


_JOINED_ASK = re.compile(r"\b(?:and|also|plus|vs|versus|separately)\b|[+&,;]|\b1\)|\btwo things\b", re.IGNORECASE)
_LEADING_CONNECTOR = re.compile(r"^\W*(?:and|but|also|so|or|plus)\b", re.IGNORECASE)
_SENTENCE_BREAK = re.compile(r"[.?!]\s+(?=\S)")  # a sentence ends and another follows


def clean_question(message: str) -> tuple[bool, str]:
    """(whether a first-turn message reads as one clean question, why not): rule 1 of the gate."""
    words = message.split()
    if len(words) > CLEAN_MAX_WORDS:
        return False, f"long message ({len(words)} words): the ask may be wrapped in context"
    if _SENTENCE_BREAK.search(message.strip()):
        return False, "several sentences: it may ask several things"
    joined = _JOINED_ASK.search(_LEADING_CONNECTOR.sub("", message))  # "and why?" opens with "and": it joins nothing
    if joined:
        return False, f"may ask two things: {joined.group(0)!r}"
    return True, "first turn: one clean question"


def needs_condensing(message: str, history: Sequence[ChatMessage]) -> tuple[bool, str]:
    """(whether `message` needs rewriting, by the LM, to be searched well, why): the gate of the
    module docstring. Costs no model call."""
    text = " ".join(message.split())
    if len(text) > PASTE_CHARS:
        return False, f"too long to condense ({len(text)} characters, over {PASTE_CHARS}): a paste, searched as typed"
    if not any(turn.role == MessageRole.USER and (turn.content or "").strip() for turn in history):
        clean, why = clean_question(text)
        return (False, why) if clean else (True, why)
    if len(text) > LONG_MESSAGE_CHARS:
        return True, f"long message (over {LONG_MESSAGE_CHARS} characters): the ask may be wrapped in context"
    letters = _LETTER.findall(text)
    latin = _LATIN_LETTER.findall(text)
    if not letters or len(latin) < len(letters) / 2:
        return True, "not mostly in Latin script: the gate's word lists are English, so the model decides"
    words = _words(text)
    opener = _OPENERS.match(" ".join(words))
    if opener:
        return True, f"continues the conversation: opens with {opener.group(0)!r}"
    for i, word in enumerate(words):
        if word in PRONOUNS or word.split("'")[0] in PRONOUNS:
            return True, f"refers back: {word.split(chr(39))[0]!r}"
        if word.split("'")[0] == "that" and (i == 0 or i == len(words) - 1 or words[i - 1] in THAT_AFTER):
            return True, "refers back: 'that'"
    phrase = _REFERRING_PHRASES.search(" ".join(words))
    if phrase:
        return True, f"refers back: {phrase.group(0)!r}"
    if not [w for w in words if w not in FILLER]:
        return True, "elliptical: no subject of its own"
    if len(words) <= 4 and words[0] in PREPOSITIONS:
        return True, f"elliptical: a short phrase opening with {words[0]!r}"
    clean, why = clean_question(text)
    if not clean:
        return True, why
    return False, "stands alone: nothing refers back"


@dataclass(frozen=True)
class Condensed:
    """What the condense step made of one message."""

    message: str  # as the user wrote it
    questions: tuple[str, ...]  # the standalone search question(s): the message itself unless condensed
    condensed: bool  # the gate sent the message to the LM
    reason: str  # the gate's reason
    method: str = "as-is"  # as-is | lines | llm | fallback
    raw: str = ""  # the LM's text, for the trace
    note: str = ""  # why a fallback was used
    seconds: float = 0.0
    history_messages: int = 0  # messages of history the condense prompt showed

    @property
    def question(self) -> str:
        """The search question(s) as one text, one per line (what the query engine is given)."""
        return "\n".join(self.questions)

    @property
    def changed(self) -> bool:
        return self.questions != (self.message,)

    def as_dict(self) -> dict[str, Any]:
        return {
            "condensed": self.condensed,
            "reason": self.reason,
            "method": self.method,
            "question": self.question,
            "questions": list(self.questions),
            "raw": self.raw,
            "note": self.note,
            "seconds": round(self.seconds, 4),
            "history_messages": self.history_messages,
        }


LLMSource = Union[Any, Callable[[], Any]]
_LABEL = re.compile(r"^\s*(?:standalone (?:search )?questions?|search (?:questions?|query)|questions?|rewritten(?: questions?)?|rewrite|query|sub-question)\s*\d*\s*:\s*", re.IGNORECASE)
_NUMBERING = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")


def clean_condensed(raw: str, *, limit: int = 3) -> list[str]:
    """The LM's text -> the search questions: non-empty lines with labels ("Standalone question:"),
    numbering, quotes and markup stripped, each cut at MAX_QUESTION_CHARS, duplicates and lines
    with fewer than two letters dropped, at most `limit`."""
    from pipeline.generate import clean_answer

    questions: list[str] = []
    for line in clean_answer(raw).splitlines():
        text = _LABEL.sub("", _NUMBERING.sub("", line.strip())).strip().strip("\"'`*“”‘’ ").strip()
        text = " ".join(text.split())[:MAX_QUESTION_CHARS].rstrip()
        if len(_LETTER.findall(text)) >= 2 and text.lower() not in {q.lower() for q in questions}:
            questions.append(text)
        if len(questions) == limit:
            break
    return questions


def question_lines(message: str, *, limit: int = 3) -> list[str]:
    """A message of several lines each of which is a short question (what the chat passes to a
    query engine after condensing a compound message; or a user's own list): its lines; else []."""
    lines = [" ".join(line.split()) for line in message.splitlines() if line.strip()]
    if not 2 <= len(lines) <= limit or any(len(line.split()) > CLEAN_MAX_WORDS for line in lines):
        return []
    return lines


def previous_question(history: Sequence[ChatMessage]) -> str:
    """The last user turn's standalone question (as the chat recorded it), else its words."""
    for turn in reversed(history):
        if turn.role == MessageRole.USER and (turn.content or "").strip():
            return str(turn.additional_kwargs.get("standalone_question") or turn.content).strip()
    return ""


def bounded_message(message: str, limit: int = MESSAGE_CHARS) -> str:
    """The message as the prompt shows it: whole, or its first and last halves around " … "."""
    if len(message) <= limit:
        return message
    return f"{message[: limit // 2].rstrip()} … {message[-limit // 2 :].lstrip()}"


class Condenser:
    """History + message -> standalone search question(s) with a (LoRA) LM, behind the no-model gate.

    The constructor only stores settings: a zero-argument callable passed as `llm` is called on
    the first message that needs condensing, so a conversation of standalone questions never
    loads a model. `enabled=False` uses every message as typed (chat.condense: false). `prompt`
    builds the LM's messages from (history, message) (default rewrite.prompts.condense_messages;
    the benchmark also runs LlamaIndex's condense template through it); `gate=False` sends every
    message with history to the LM and none without (LlamaIndex's CondenseQuestionChatEngine)."""

    def __init__(
        self,
        llm: Optional[LLMSource] = None,
        *,
        max_new_tokens: int = 64,
        enabled: bool = True,
        max_questions: int = 3,
        prompt: Callable[[Sequence[ChatMessage], str], list[ChatMessage]] = condense_messages,
        gate: bool = True,
    ) -> None:
        if enabled and llm is None:
            raise ValueError("Condenser: condensing needs an llm (a LlamaIndex LLM or a loader); pass llm=... or enabled=False")
        if max_new_tokens < 1:
            raise ValueError(f"Condenser: max_new_tokens must be >= 1; got {max_new_tokens}")
        if max_questions < 1:
            raise ValueError(f"Condenser: max_questions must be >= 1; got {max_questions}")
        self._llm_source = llm
        self._llm: Any = None
        self.max_new_tokens = max_new_tokens
        self.max_questions = max_questions
        self.enabled = enabled
        self.prompt = prompt
        self.use_gate = gate

    @property
    def llm(self) -> Any:
        if self._llm is None:
            self._llm = resolve_llm(self._llm_source)
        return self._llm

    def gate(self, message: str, history: Sequence[ChatMessage]) -> tuple[bool, str]:
        """(needs the LM, why): `needs_condensing`, or never when condensing is off."""
        if not self.enabled:
            return False, "condensing off (chat.condense: false)"
        if not self.use_gate:
            has_history = any(turn.role == MessageRole.USER and (turn.content or "").strip() for turn in history)
            return (True, "every turn after the first (no gate)") if has_history else (False, "first turn (no gate)")
        return needs_condensing(message, history)

    def _plan(self, message: Any, history: Sequence[ChatMessage]) -> tuple[Optional[Condensed], str, list[ChatMessage]]:
        """(the result when no LM is needed, the gate's reason, the history)."""
        if not isinstance(message, str) or not message.strip():
            raise ValueError(f"Condenser: the message must be a non-empty string; got {message!r:.60}")
        message = message.strip()
        history = list(history)
        lines = question_lines(message, limit=self.max_questions) if self.enabled else []
        if lines:
            return Condensed(message, tuple(lines), False, "one question per line", "lines"), "", history
        needed, reason = self.gate(message, history)
        if not needed:
            return Condensed(message=message, questions=(message,), condensed=False, reason=reason), reason, history
        return None, reason, history

    def _finish(self, message: str, history: list[ChatMessage], reason: str, raw: str, note: str, seconds: float) -> Condensed:
        questions = clean_condensed(raw, limit=self.max_questions)
        if not questions:
            note = note or f"the model wrote no usable question ({raw.strip()[:80]!r})"
            previous = previous_question(history)[:FALLBACK_PREVIOUS_CHARS].strip()
            return Condensed(message.strip(), (f"{previous} {bounded_message(message.strip())}".strip(),), True, reason, "fallback", raw, note, seconds, len(history))
        return Condensed(message.strip(), tuple(questions), True, reason, "llm", raw, note, seconds, len(history))

    def condense(self, message: str, history: Sequence[ChatMessage]) -> Condensed:
        """The standalone question(s) for `message` after `history` (ChatMessages, oldest first)."""
        done, reason, history = self._plan(message, history)
        if done is not None:
            return done
        started = time.perf_counter()
        raw, note = "", ""
        try:
            raw = self._generate([self.prompt(history, bounded_message(message.strip()))])[0]
        except PromptTooLongError as exc:  # history + message over the model's window: bounded, not fatal
            note = f"the condense prompt did not fit the model ({exc})"
        return self._finish(message, history, reason, raw, note, time.perf_counter() - started)

    def condense_many(self, items: Sequence[tuple[str, Sequence[ChatMessage]]], *, show_progress: bool = False) -> list[Condensed]:
        """`condense` of many (message, history) pairs, the LM's calls in one batched pass (the
        benchmark, training-data checks); the same results as one by one."""
        planned = [self._plan(message, history) for message, history in items]
        todo = [i for i, (done, _, _) in enumerate(planned) if done is None]
        raws: list[str] = []
        started = time.perf_counter()
        if todo:
            prompts = [self.prompt(planned[i][2], bounded_message(items[i][0].strip())) for i in todo]
            try:
                raws = self._generate(prompts, show_progress=show_progress)
            except PromptTooLongError:  # one prompt over the window: each on its own, that one falls back
                return [self.condense(message, history) for message, history in items]
        share = (time.perf_counter() - started) / max(1, len(todo))
        out: list[Condensed] = [done for done, _, _ in planned]  # type: ignore[misc]
        for i, raw in zip(todo, raws):
            out[i] = self._finish(items[i][0], planned[i][2], planned[i][1], raw, "", share)
        return out

    async def acondense(self, message: str, history: Sequence[ChatMessage]) -> Condensed:
        """`condense` without blocking the event loop (the LM runs in a worker thread)."""
        return await asyncio.to_thread(self.condense, message, history)

    def _generate(self, prompts: list[list[ChatMessage]], *, show_progress: bool = False) -> list[str]:
        llm = self.llm
        if hasattr(llm, "generate_batch") and hasattr(llm, "render"):  # pipeline.models.LocalCausalLM: memoized greedy pass
            return llm.generate_batch([llm.render(m) for m in prompts], max_new_tokens=self.max_new_tokens, temperature=0.0, show_progress=show_progress)
        return [llm.chat(m, max_new_tokens=self.max_new_tokens).message.content or "" for m in prompts]
