"""`Condenser`: a conversation's last message -> one standalone search question (the chat's rewrite).

    from rewrite import Condenser, needs_condensing
    condenser = Condenser(llm)                      # llm: a LlamaIndex LLM, or a zero-arg loader
    made = condenser.condense("and why do databases use it?", history)   # history: ChatMessages, oldest first
    made.question        # "Why do databases use B-trees?" (the LM's rewrite), or the message as typed
    made.condensed       # whether the gate sent it to the LM
    made.reason          # the gate's reason, e.g. "refers back: 'it'"

The gate (`needs_condensing`) decides, with no model, whether a message needs its conversation to
be understood; only then is the LM called. Its rules, in order (the first that applies decides):

1. no earlier user turn (a first turn, or after `reset()`): standalone;
2. longer than `LONG_MESSAGE_CHARS` (400) characters: standalone, a long message carries its own
   context (and the condense prompt stays short);
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
7. otherwise: standalone (used as typed, no LM call).

Messages in other Latin-script languages rarely match the English lists and mostly pass as
standalone (rule 7); messages in other scripts go to the LM (rule 3).

The condense prompt (rewrite.prompts.condense_messages) shows the conversation (the user's turns,
each answer cut to 300 characters) and the last message. The LM's text is cleaned (first line,
labels and quotes stripped); when nothing usable remains, or the prompt would not fit the model's
context window, the search question is the previous question followed by the message (method
`fallback`), never an error. A trained condenser is a LoRA adapter on the same base model with the
same prompt (chat.condense_adapter): it replaces the LM, not this code.
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


def needs_condensing(message: str, history: Sequence[ChatMessage]) -> tuple[bool, str]:
    """(whether `message` needs the conversation to be understood, why): the gate of the module
    docstring. Costs no model call."""
    if not any(turn.role == MessageRole.USER and (turn.content or "").strip() for turn in history):
        return False, "first turn: no earlier question"
    text = " ".join(message.split())
    if len(text) > LONG_MESSAGE_CHARS:
        return False, f"long message (over {LONG_MESSAGE_CHARS} characters): it carries its own context"
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
    return False, "stands alone: nothing refers back"


@dataclass(frozen=True)
class Condensed:
    """What the condense step made of one message."""

    message: str  # as the user wrote it
    question: str  # the standalone search question: the message itself unless condensed
    condensed: bool  # the gate sent the message to the LM
    reason: str  # the gate's reason
    method: str = "as-is"  # as-is | llm | fallback
    raw: str = ""  # the LM's text, for the trace
    note: str = ""  # why a fallback was used
    seconds: float = 0.0
    history_messages: int = 0  # messages of history the condense prompt showed

    def as_dict(self) -> dict[str, Any]:
        return {
            "condensed": self.condensed,
            "reason": self.reason,
            "method": self.method,
            "question": self.question,
            "raw": self.raw,
            "note": self.note,
            "seconds": round(self.seconds, 4),
            "history_messages": self.history_messages,
        }


LLMSource = Union[Any, Callable[[], Any]]
_LABEL = re.compile(r"^\s*(?:standalone (?:search )?question|search (?:question|query)|question|rewritten(?: question)?|rewrite|query)\s*:\s*", re.IGNORECASE)


def clean_condensed(raw: str) -> str:
    """The LM's text -> one question: the first non-empty line, labels ("Standalone question:"),
    quotes and surrounding markup stripped, cut at MAX_QUESTION_CHARS."""
    from pipeline.generate import clean_answer

    lines = [line.strip() for line in clean_answer(raw).splitlines() if line.strip()]
    if not lines:
        return ""
    text = _LABEL.sub("", lines[0]).strip().strip("\"'`*“”‘’ ").strip()
    text = " ".join(text.split())
    return text[:MAX_QUESTION_CHARS].rstrip()


def previous_question(history: Sequence[ChatMessage]) -> str:
    """The last user turn's standalone question (as the chat recorded it), else its words."""
    for turn in reversed(history):
        if turn.role == MessageRole.USER and (turn.content or "").strip():
            return str(turn.additional_kwargs.get("standalone_question") or turn.content).strip()
    return ""


class Condenser:
    """History + message -> standalone question with a (LoRA) LM, behind the no-model gate.

    The constructor only stores settings: a zero-argument callable passed as `llm` is called on
    the first message that needs condensing, so a conversation of standalone questions never
    loads a model. `enabled=False` uses every message as typed (chat.condense: false)."""

    def __init__(self, llm: Optional[LLMSource] = None, *, max_new_tokens: int = 48, enabled: bool = True) -> None:
        if enabled and llm is None:
            raise ValueError("Condenser: condensing needs an llm (a LlamaIndex LLM or a loader); pass llm=... or enabled=False")
        if max_new_tokens < 1:
            raise ValueError(f"Condenser: max_new_tokens must be >= 1; got {max_new_tokens}")
        self._llm_source = llm
        self._llm: Any = None
        self.max_new_tokens = max_new_tokens
        self.enabled = enabled

    @property
    def llm(self) -> Any:
        if self._llm is None:
            self._llm = resolve_llm(self._llm_source)
        return self._llm

    def gate(self, message: str, history: Sequence[ChatMessage]) -> tuple[bool, str]:
        """(needs the LM, why): `needs_condensing`, or never when condensing is off."""
        if not self.enabled:
            return False, "condensing off (chat.condense: false)"
        return needs_condensing(message, history)

    def condense(self, message: str, history: Sequence[ChatMessage]) -> Condensed:
        """The standalone question for `message` after `history` (ChatMessages, oldest first)."""
        if not isinstance(message, str) or not message.strip():
            raise ValueError(f"Condenser: the message must be a non-empty string; got {message!r:.60}")
        message = message.strip()
        history = list(history)
        needed, reason = self.gate(message, history)
        if not needed:
            return Condensed(message=message, question=message, condensed=False, reason=reason)

        started = time.perf_counter()
        raw, note = "", ""
        try:
            raw = self._generate(condense_messages(history, message))
        except PromptTooLongError as exc:  # history + message over the model's window: bounded, not fatal
            note = f"the condense prompt did not fit the model ({exc})"
        question = clean_condensed(raw)
        if len(_LETTER.findall(question)) < 2:
            note = note or f"the model wrote no usable question ({raw.strip()[:80]!r})"
            previous = previous_question(history)[:FALLBACK_PREVIOUS_CHARS].strip()
            question = f"{previous} {message}".strip()
            method = "fallback"
        else:
            method = "llm"
        return Condensed(message, question, True, reason, method, raw, note, time.perf_counter() - started, len(history))

    async def acondense(self, message: str, history: Sequence[ChatMessage]) -> Condensed:
        """`condense` without blocking the event loop (the LM runs in a worker thread)."""
        return await asyncio.to_thread(self.condense, message, history)

    def _generate(self, messages: list[ChatMessage]) -> str:
        llm = self.llm
        if hasattr(llm, "generate_batch") and hasattr(llm, "render"):  # pipeline.models.LocalCausalLM: memoized greedy pass
            return llm.generate_batch([llm.render(messages)], max_new_tokens=self.max_new_tokens, temperature=0.0, show_progress=False)[0]
        return llm.chat(messages, max_new_tokens=self.max_new_tokens).message.content or ""
