"""The cases of the realistic-query benchmark: what users type, each pointing at seed questions.

A `Case` is one message a user sends (`message`, with the conversation before it in `history`
for follow-ups) and the seed question(s) whose answer(s) it needs (`targets`, exact question
texts of one split; resolved to the open-book node ids `<split>-<line index>` at run time).

Families:
  clean      the seed question itself (every question of the split).
  follow-up  the last turn of a conversation; it depends on the history (pronouns, ellipsis) or,
             for topic shifts, asks something new that does not.
  verbose    one ask wrapped in fluff and red herrings (other topics named in passing, typos).
  compound   two asks in one message; two distinct targets.

Sources:
  hand       written by hand, as a new user would type: the benchmark's `eval/realistic/data/{val,test}.jsonl`.
  generated  built here from the split's own questions, deterministic with a seed: same-topic
             question pairs (sharing a salient noun phrase) for follow-ups whose last turn names
             the topic with a pronoun, topic shifts, verbose wrappers (fluff + a red herring drawn
             from another question + optional typos), compound joins with varied connectors.

Dev cases come from val, test cases from test; `build_cases(data_dir, "train")` generates cases
from the train split only (training data for a rewriter) and never reads val or test. Every
builder reads only the split it is given. This module depends on nothing above pipeline.data,
so a lower layer that needs the train mode can take it as is.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from pipeline.data import SPLITS, DataError, load_split

FAMILIES = ("clean", "follow-up", "verbose", "compound")
HAND_FAMILIES = ("follow-up", "verbose", "compound")
SOURCES = ("hand", "generated")
ROLES = ("user", "assistant")
GENERATED_PER_FAMILY = 100  # generated cases per family and split (at most; follow-ups need same-topic pairs)
TOPIC_SHIFT_SHARE = 0.25  # of the generated follow-ups: the last turn is standalone, the history is another topic
HAND_KEYS = {"id", "family", "split", "kind", "history", "message", "targets", "note"}


@dataclass(frozen=True)
class Case:
    """One user message and the seed questions it needs."""

    id: str
    family: str  # clean | follow-up | verbose | compound
    split: str  # the split of every target
    source: str  # hand | generated
    message: str  # the last user turn, as typed
    targets: tuple[str, ...]  # exact seed question texts of `split` (compound: two)
    history: tuple[Mapping[str, str], ...] = ()  # earlier turns, oldest first: {"role": "user"|"assistant", "content": ...}
    kind: str = ""  # what sort of case: follow-up pronoun | ellipsis | topic-shift; generated: the template
    relevant: tuple[str, ...] = field(default=(), compare=False)  # node ids of the targets, set by `resolve_cases`

    @property
    def conversation(self) -> list[dict[str, str]]:
        """Every turn, the message last: what a chat engine holds when the message arrives."""
        return [dict(t) for t in self.history] + [{"role": "user", "content": self.message}]

    def to_dict(self) -> dict[str, Any]:
        row = {"id": self.id, "family": self.family, "split": self.split, "source": self.source, "kind": self.kind, "history": [dict(t) for t in self.history], "message": self.message, "targets": list(self.targets)}
        if self.relevant:
            row["relevant"] = list(self.relevant)
        return row


# --------------------------------------------------------------------------------------------
# hand-written cases
# --------------------------------------------------------------------------------------------


def _check_hand_row(row: Any, split: str, where: str) -> Case:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with id, family, split, message, targets; got {type(row).__name__}")
    unknown = set(row) - HAND_KEYS
    if unknown:
        raise DataError(f"{where}: unknown keys {sorted(unknown)}; a case has {', '.join(sorted(HAND_KEYS))}")
    for key in ("id", "family", "split", "message"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise DataError(f"{where}: {key!r} must be a non-empty string; got {row.get(key)!r}")
    if row["family"] not in HAND_FAMILIES:
        raise DataError(f"{where}: family {row['family']!r}; hand-written cases are one of {', '.join(HAND_FAMILIES)}")
    if row["split"] != split:
        raise DataError(f"{where}: split {row['split']!r} in the {split} file; the targets of a case come from the file's split")
    targets = row.get("targets")
    want = 2 if row["family"] == "compound" else 1
    if not isinstance(targets, list) or len(targets) != want or not all(isinstance(t, str) and t for t in targets) or len(set(targets)) != want:
        raise DataError(f"{where}: a {row['family']} case needs {want} distinct target question(s) in 'targets'; got {targets!r}")
    history = row.get("history", [])
    if row["family"] == "follow-up" and not history:
        raise DataError(f"{where}: a follow-up needs the earlier turns in 'history'")
    if row["family"] != "follow-up" and history:
        raise DataError(f"{where}: only follow-ups have a 'history'; this one is {row['family']}")
    if not isinstance(history, list) or not all(isinstance(t, dict) and set(t) == {"role", "content"} and t["role"] in ROLES and isinstance(t["content"], str) and t["content"].strip() for t in history):
        raise DataError(f"{where}: 'history' must be a list of {{'role': 'user'|'assistant', 'content': TEXT}}; got {history!r}")
    return Case(id=row["id"], family=row["family"], split=split, source="hand", message=row["message"], targets=tuple(targets), history=tuple(history), kind=row.get("kind", ""))


def load_hand_cases(path: str | Path, split: str) -> list[Case]:
    """The hand-written cases of `split` from a JSONL file (one case per line; see data/README.md)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing; the benchmark's hand-written {split} cases live in eval/realistic/data/{split}.jsonl (or pass another folder with {split}.jsonl)")
    cases, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
        case = _check_hand_row(row, split, where)
        if case.id in seen:
            raise DataError(f"{where}: id {case.id!r} repeated; ids are unique within a file")
        seen.add(case.id)
        cases.append(case)
    return cases


def resolve_cases(cases: Iterable[Case], questions: Sequence[str], split: str, *, where: str = "") -> list[Case]:
    """Each case with `relevant` set to its targets' node ids (`<split>-<index in the split>`).
    A target that is not a question of `split` is an error naming the case and the closest questions."""
    index: dict[str, int] = {}
    for i, q in enumerate(questions):
        index.setdefault(q, i)
    out = []
    for case in cases:
        if case.split != split:
            raise DataError(f"case {case.id!r} targets the {case.split} split, not {split}")
        missing = [t for t in case.targets if t not in index]
        if missing:
            close = difflib.get_close_matches(missing[0], list(index), n=3, cutoff=0.5)
            hint = f"; the closest: {close}" if close else ""
            raise DataError(f"{where or 'case'} {case.id!r}: target {missing[0]!r} is not a question of the {split} split{hint}. Fix: copy the seed question's exact text")
        out.append(dataclasses.replace(case, relevant=tuple(f"{split}-{index[t]}" for t in case.targets)))
    return out


# --------------------------------------------------------------------------------------------
# text helpers: topics, salient noun phrases, pronouns, typos
# --------------------------------------------------------------------------------------------

STOPWORDS = frozenset(
    "a an the and or of in on for to with by from as at is are was be does do did how what when why which who whom whose "
    "this that these those it its vs versus between into over under about can you your we our their they his her "
    "explain describe define discuss compare what's give example use used using work works purpose role concept "
    "difference main key primary importance benefit benefits function would should could".split()
)
# words that are never a topic on their own (frequent in technical questions across subjects)
GENERIC = frozenset(
    "security control controls data cloud system systems model models management analysis automation workflow "
    "process processes design pattern patterns testing test tests application applications architecture service "
    "services based approach strategy strategies best practices types type level levels time network networks "
    "learning computing programming development software code performance monitoring memory node file thread "
    "attack filter content user session access image edge load support important name schema scaling database "
    "databases processing batch availability logic benchmark risk effectiveness".split()
)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9+#'./-]*[A-Za-z0-9+#]|[A-Za-z0-9]")
_LEAD = re.compile(
    r"^(?:(?:can|could) you (?:please )?)?(?:what(?:'s| is| are| does| do)|explain|describe|define|discuss|compare|differentiate between|"
    r"how (?:does|do|is|are|can|would|should)(?: you)?|why (?:is|are|does|do|use|would you use|encrypt)|when (?:is|would you (?:use|choose))|"
    r"what happens (?:during|when)|what (?:problem|features) (?:does|define)|give an example of|design(?: and implement)?|implement|develop|build|create|write|find|optimize)\s+",
    re.I,
)
_ASPECT = re.compile(r"^(?:the )?(?:concept|role|purpose|function|principles?|difference|main advantage|importance|use|primary goal|key benefit)s? (?:of|between) ", re.I)
_ARTICLE = re.compile(r"^(?:the|a|an) ", re.I)
_TRAILING = re.compile(r"(?:,? and (?:how|why|when|what|where|can)\b.*|\s+(?:work|works|used for|used|do|does|solve|optimized for|illustrate|list|represent|mean|important|appropriate|risky))$", re.I)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (keeps C++, Node.js, 51%, k-means as one token)."""
    return [w.lower().strip(".") for w in _WORD.findall(text)]


def topic(question: str) -> str:
    """The subject of a seed question with its scaffolding removed: "What is the role of etcd in
    Kubernetes?" -> "etcd in Kubernetes"; "Explain the concept of recursion." -> "recursion"."""
    text = question.strip().rstrip("?.! ")
    for pattern in (_LEAD, _ASPECT, _ARTICLE, _TRAILING):
        text = pattern.sub("", text, count=1)
    return text.strip() or question.strip().rstrip("?.! ")


def phrases(question: str, max_n: int = 4) -> set[tuple[str, ...]]:
    """Candidate noun phrases of a question: its topic's word n-grams (n <= max_n) that neither
    start nor end with a stop word."""
    tokens = words(topic(question))
    out = set()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            gram = tuple(tokens[i : i + n])
            if gram[0] in STOPWORDS or gram[-1] in STOPWORDS:
                continue
            out.add(gram)
    return out


def _proper(word: str, questions: Iterable[str]) -> bool:
    """Whether every one of `questions` writes `word` as a name: capitalised where it is not the
    first word, or with a capital or digit inside (Kubernetes, Prometheus, gRPC; not "support")."""
    for q in questions:
        tokens = _WORD.findall(q)
        forms = [t for i, t in enumerate(tokens) if t.lower().strip(".") == word and (i > 0 or any(c.isupper() or c.isdigit() for c in t[1:]))]
        if not any(f[:1].isupper() or any(c.isupper() or c.isdigit() for c in f[1:]) for f in forms):
            return False
    return True


def salient_phrases(questions: Sequence[str], *, max_df: int = 4) -> list[set[tuple[str, ...]]]:
    """Per question, its phrases that name a topic shared with at most `max_df` questions of the
    list (so "security control", in dozens of questions, never pairs two of them): multi-word
    phrases not made of GENERIC words only, or a single word of 4+ characters, not GENERIC, that
    every question sharing it writes as a name (Kubernetes, Prometheus; not "support")."""
    per_question = [phrases(q) for q in questions]
    members: dict[tuple[str, ...], list[int]] = {}
    for i, grams in enumerate(per_question):
        for g in grams:
            members.setdefault(g, []).append(i)

    def keep(g: tuple[str, ...]) -> bool:
        if not 2 <= len(members[g]) <= max_df:
            return False
        if len(g) > 1:
            return not all(w in GENERIC for w in g)
        return len(g[0]) >= 4 and g[0] not in GENERIC and _proper(g[0], [questions[i] for i in members[g]])

    kept = {g for g in members if keep(g)}
    return [grams & kept for grams in per_question]


def same_topic_pairs(questions: Sequence[str], *, max_df: int = 4) -> list[tuple[int, int, tuple[str, ...]]]:
    """Every unordered pair of questions (i < j) that share a salient noun phrase, with the phrase
    they share (the longest, then the rarest, then the first in sort order)."""
    salient = salient_phrases(questions, max_df=max_df)
    df = Counter(g for grams in salient for g in grams)
    by_phrase: dict[tuple[str, ...], list[int]] = {}
    for i, grams in enumerate(salient):
        for g in grams:
            by_phrase.setdefault(g, []).append(i)
    best: dict[tuple[int, int], tuple[str, ...]] = {}
    for g, members in by_phrase.items():
        for a in members:
            for b in members:
                if a < b and questions[a].strip().lower() != questions[b].strip().lower():
                    old = best.get((a, b))
                    if old is None or (-len(g), df[g], g) < (-len(old), df[old], old):
                        best[(a, b)] = g
    return [(a, b, g) for (a, b), g in sorted(best.items())]


def _phrase_pattern(phrase: Sequence[str]) -> re.Pattern[str]:
    body = r"[\s-]+".join(re.escape(w) for w in phrase)
    # the phrase with its article before it and an acronym in brackets after it: "the Bloom Filter (BF)"
    return re.compile(r"(?:\b(?:the|a|an)\s+)?['\"]?(?<![\w-])" + body + r"(?![\w-])['\"]?(?:\s*\([^)]*\))?", re.I)


# words that may follow a topic named as a whole ("How does X work?", "X and Y", "X in Z")
_AFTER_TOPIC = (STOPWORDS - {"of"}) | frozenset("differ help handle ensure enable improve maintain evaluate communicate complements prevent support mean represent illustrate list define solve minimize".split())


def with_pronoun(question: str, phrase: Sequence[str]) -> Optional[str]:
    """The question with its first mention of `phrase` replaced by "it" ("the role of it" ->
    "its role"); None when the phrase is not in the question's text or is only part of a larger
    noun phrase there ("business impact analysis" for "impact"), where a pronoun would not read."""
    match = _phrase_pattern(phrase).search(question)
    if not match:
        return None
    before = words(question[: match.start()])
    after = words(question[match.end() :])
    if (before and before[-1] not in STOPWORDS) or (after and after[0] not in _AFTER_TOPIC):
        return None
    text = question[: match.start()] + "it" + question[match.end() :]
    text = re.sub(r"\bthe (\w+(?: \w+)?) of it\b", r"its \1", text, count=1, flags=re.I)
    return re.sub(r"\s+", " ", text).strip()


def lower_first(text: str) -> str:
    """First letter lower-cased unless the first word is an acronym or a name with inner capitals (AWS, JWT, iOS)."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and (first.isupper() or any(c.isupper() for c in first[1:])):
        return text
    return text[:1].lower() + text[1:]


def strip_end(question: str) -> str:
    return question.strip().rstrip("?.! ")


def inject_typos(text: str, rate: float, rng: random.Random) -> str:
    """Character-level typos as fast typing makes them: in each word of 4+ letters, with
    probability `rate`, two neighbouring letters swapped, a letter dropped or a letter doubled.
    Deterministic for a given `rng` state."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"inject_typos: rate must lie in [0, 1]; got {rate}")

    def typo(match: re.Match[str]) -> str:
        word = match.group(0)
        if rng.random() >= rate:
            return word
        i = rng.randrange(1, len(word) - 1)  # keep the first letter: people rarely miss it
        kind = rng.choice(("swap", "drop", "double"))
        if kind == "swap":
            return word[:i] + word[i + 1] + word[i] + word[i + 2 :] if i + 1 < len(word) else word[:i] + word[i:][::-1]
        if kind == "drop":
            return word[:i] + word[i + 1 :]
        return word[:i] + word[i] + word[i:]

    return re.sub(r"[A-Za-z]{4,}", typo, text)


# --------------------------------------------------------------------------------------------
# templates
# --------------------------------------------------------------------------------------------

FOLLOW_UP_PREFIXES = ("and ", "ok and ", "thanks! ", "got it. ", "", "cool, ", "one more thing: ", "hmm ok, ", "right, ", "makes sense. ")
VERBOSE_OPENERS = ("hey,", "hi all,", "Hello!", "quick question.", "ok so", "hey there, hope you're doing well.", "Sorry if this is a dumb question.", "hi!", "Good morning.", "")
VERBOSE_CONTEXTS = (
    "I'm prepping for a backend interview next week and this keeps coming up.",
    "I'm a junior dev at a small fintech startup and my lead threw this at me today.",
    "my manager keeps mentioning this in standups and I nod along but honestly I'm lost",
    "I have an exam on this friday and the lecture slides are useless.",
    "we're migrating a big legacy app at work and the topic came up in a design review.",
    "I've been reading a system design book on the train and got confused.",
    "I'm switching careers from marketing into tech, so bear with me.",
    "context: I'm a data analyst, not a software engineer, so go easy on me.",
    "I got asked this in a phone screen yesterday and totally blanked.",
    "my team lead wants a short write-up on this by monday.",
)
VERBOSE_HERRINGS = (
    "we also use {h} but that part is fine, I get it.",
    "(not asking about {h}, I already know that one)",
    "earlier today I was reading about {h}, which was easy enough.",
    "my colleague keeps bringing up {h} but I think that's a separate thing.",
    "I spent all morning on {h} so my brain is fried lol.",
    "last week it was {h}, this week it's this.",
)
VERBOSE_ASKS = ("So my question is: {q}", "{q}", "basically: {q}", "what I want to know is {ql}", "can someone tell me {ql}", "anyway, {ql}", "Question: {q}", "long story short, {ql}")
VERBOSE_ASKS_IMPERATIVE = ("So my question: {q}", "{q}", "could you {ql}", "pls {ql}", "can someone {ql}", "Question: {q}", "anyway, can you {ql}")
IMPERATIVES = frozenset("explain describe define discuss compare design implement develop build create write find optimize give differentiate".split())
VERBOSE_CLOSERS = ("thanks in advance!", "thx", "any help appreciated :)", "", "cheers", "sorry for the long message lol", "ty!!", "")
COMPOUND_CONNECTORS = (
    "{a} Also, {bl}",
    "{a_} and {bl}",
    "two questions: 1) {a} 2) {b}",
    "{a} Plus {bl}",
    "{a}\n{b}",
    "{a} Oh and one more: {bl}",
    "{a_}, and also {bl}",
    "{a} And while we're at it, {bl}",
    "{al} + {bl}",
    "I have 2 qs. first, {al} second, {bl}",
)


def _casual(text: str, rng: random.Random) -> str:
    """What users do to a question: lower-case its start, drop its final mark."""
    if rng.random() < 0.6:
        text = lower_first(text)
    if rng.random() < 0.35:
        text = strip_end(text)
    return text


FOLLOW_UP_INTROS = ("what's {h}?", "can you explain {h} in simple terms", "so I'm trying to understand {h}", "we started using {h} at work last month", "tell me about {h}", "quick one about {h}", "{h}, what is it?", "never really got {h} tbh")
_HEAD_CUT = re.compile(
    r"\s*\([^)]*\).*|\s*,.*|\s+(?:in|for|of|on|to|with|and|or|vs\.?|versus|over|from|across|during|when|per|as|like|by|against)\s+.*"
    r"|\s+(?:work|works|differ|differs|ensure|handle|enable|improve|maintain|evaluate|communicate|complements?|benefit|support|help|prevent|minimize|enhance|differences?)\b.*",
    re.I,
)
_TASKS = re.compile(r"^(?:how (?:do|would|can|should) you|design|implement|develop|build|create|write|find|optimize)\b", re.I)


def head_phrase(question: str) -> str:
    """The noun phrase a question is about, to name it in an earlier turn: its topic up to the
    first preposition or conjunction ("etcd in Kubernetes" -> "etcd")."""
    text = topic(question)
    head = _HEAD_CUT.sub("", text, count=1).strip()
    rest = re.match(r"\s+(?:and|or|vs\.?|versus)\s+(?:(?:the|a|an)\s+)?(.*)", text[len(head) :], re.I) if text.startswith(head) else None
    if rest and len(words(head)) < len(words(_HEAD_CUT.sub("", rest.group(1), count=1))):
        return ""  # "horizontal" of "horizontal and vertical scaling": a modifier of the noun the two share
    return head


def _asks_something(message: str) -> bool:
    """False for a pronoun question that asks nothing but "what is it?" ("explain its concept")."""
    return bool(set(words(message)) - STOPWORDS - {"it", "its", "ok", "thanks", "got", "cool", "hmm", "right", "makes", "sense", "one", "more", "thing"})


def _follow_ups(questions: Sequence[str], split: str, n: int, rng: random.Random, *, max_df: int = 4) -> list[Case]:
    """Dependent follow-ups, then topic shifts (TOPIC_SHIFT_SHARE of the whole). Dependent ones:
    first from same-topic question pairs (the earlier turn is the other seed question, kind
    `pair-pronoun`), then from an earlier turn of free text naming the target's head noun phrase
    (`intro-pronoun`); the last turn is the target question with that phrase replaced by "it"."""
    n_dependent = n - round(n * TOPIC_SHIFT_SHARE)
    cases: list[Case] = []
    used: set[int] = set()

    def add(target: int, history: str, message: str, kind: str) -> None:
        message = rng.choice(FOLLOW_UP_PREFIXES) + lower_first(message)
        message = strip_end(message) if rng.random() < 0.3 else message
        cases.append(Case(id="", family="follow-up", split=split, source="generated", message=message, targets=(questions[target],), history=({"role": "user", "content": history},), kind=kind))
        used.add(target)

    pairs = same_topic_pairs(questions, max_df=max_df)
    rng.shuffle(pairs)
    for a, b, phrase in pairs:  # either can be the earlier turn
        if len(cases) >= n_dependent:
            break
        for first, target in ((a, b), (b, a)) if rng.random() < 0.5 else ((b, a), (a, b)):
            pronoun = with_pronoun(questions[target], phrase) if target not in used else None
            if pronoun is not None and _asks_something(pronoun):
                add(target, _casual(questions[first], rng), pronoun, "pair-pronoun")
                break
    order = [i for i in range(len(questions)) if i not in used]
    rng.shuffle(order)
    for target in order:
        if len(cases) >= n_dependent:
            break
        head = "" if _TASKS.match(questions[target].strip()) else head_phrase(questions[target])
        if not head or not set(words(head)) - STOPWORDS:
            continue
        pronoun = with_pronoun(questions[target], words(head))
        if pronoun is None or not _asks_something(pronoun):
            continue
        add(target, rng.choice(FOLLOW_UP_INTROS).format(h=head), pronoun, "intro-pronoun")
    n_shift = min(n - len(cases), round(len(cases) * TOPIC_SHIFT_SHARE / (1 - TOPIC_SHIFT_SHARE)))
    salient = salient_phrases(questions, max_df=max_df)
    content = [set(words(topic(q))) - STOPWORDS for q in questions]
    order = [i for i in range(len(questions)) if i not in used]
    rng.shuffle(order)
    shifts = 0
    for target in order:
        if shifts >= n_shift:
            break
        others = [j for j in rng.sample(range(len(questions)), min(len(questions), 20)) if j != target and not content[j] & content[target] and not salient[j] & salient[target]]
        if others:
            cases.append(Case(id="", family="follow-up", split=split, source="generated", message=_casual(questions[target], rng), targets=(questions[target],), history=({"role": "user", "content": _casual(questions[others[0]], rng)},), kind="topic-shift"))
            shifts += 1
    return cases


def _verbose(questions: Sequence[str], split: str, n: int, rng: random.Random, *, typo_rate: float = 0.04) -> list[Case]:
    cases = []
    order = list(range(len(questions)))
    rng.shuffle(order)
    for target in order[:n]:
        q = questions[target].strip()
        herring_source = questions[rng.choice([j for j in range(len(questions)) if j != target])] if len(questions) > 1 else q
        herring = rng.choice(VERBOSE_HERRINGS).format(h=lower_first(topic(herring_source)))
        asks = VERBOSE_ASKS_IMPERATIVE if words(q)[:1] and words(q)[0] in IMPERATIVES else VERBOSE_ASKS
        ask = rng.choice(asks).format(q=q, ql=lower_first(q))
        parts = [rng.choice(VERBOSE_OPENERS), rng.choice(VERBOSE_CONTEXTS)]
        parts += [herring, ask] if rng.random() < 0.5 else [ask, herring]
        parts.append(rng.choice(VERBOSE_CLOSERS))
        message = " ".join(p for p in parts if p)
        typos = rng.random() < 0.5
        if typos:
            message = inject_typos(message, typo_rate, rng)
        if rng.random() < 0.3:
            message = message.lower()
        cases.append(Case(id="", family="verbose", split=split, source="generated", message=message, targets=(questions[target],), kind="wrapper+typos" if typos else "wrapper"))
    return cases


def _compound(questions: Sequence[str], split: str, n: int, rng: random.Random, *, max_df: int = 4) -> list[Case]:
    if len(questions) < 2:
        return []
    related = same_topic_pairs(questions, max_df=max_df)
    rng.shuffle(related)
    cases, seen = [], set()
    for i in range(n * 4):  # bounded: a small split may not have n distinct pairs
        if len(cases) >= n:
            break
        if i % 3 == 0 and related:  # a third on one topic ("What is X? and how does X differ from Y"), the rest unrelated
            a, b, _ = related.pop()
            kind = "same-topic"
        else:
            a, b = rng.sample(range(len(questions)), 2)
            kind = "unrelated"
        if rng.random() < 0.5:
            a, b = b, a
        if frozenset((a, b)) in seen or questions[a] == questions[b]:
            continue
        seen.add(frozenset((a, b)))
        qa, qb = questions[a].strip(), questions[b].strip()
        template = rng.choice(COMPOUND_CONNECTORS)
        message = template.format(a=qa, b=qb, a_=strip_end(qa), al=lower_first(qa), bl=lower_first(qb))
        cases.append(Case(id="", family="compound", split=split, source="generated", message=message, targets=(questions[a], questions[b]), kind=kind))
    return cases


def generate_cases(questions: Sequence[str], split: str, *, seed: int = 42, per_family: int = GENERATED_PER_FAMILY, families: Sequence[str] = HAND_FAMILIES) -> list[Case]:
    """Generated cases of the given families from the questions of one split (deterministic in
    `seed`): at most `per_family` of each; ids `<split>-gen-<family>-NNN`."""
    if split not in SPLITS:
        raise ValueError(f"generate_cases: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    builders = {"follow-up": _follow_ups, "verbose": _verbose, "compound": _compound}
    out: list[Case] = []
    for family in families:
        rng = random.Random(f"ragft-realistic-{seed}-{split}-{family}")  # str seeds are stable across runs
        made = builders[family](list(questions), split, per_family, rng)
        out += [dataclasses.replace(c, id=f"{split}-gen-{family}-{i:03d}") for i, c in enumerate(made)]
    return out


def clean_cases(questions: Sequence[str], split: str) -> list[Case]:
    """The `clean` family: every question of the split as it is."""
    return [Case(id=f"{split}-clean-{i:03d}", family="clean", split=split, source="generated", message=q, targets=(q,), kind="seed") for i, q in enumerate(questions)]


def build_cases(
    data_dir: str | Path,
    split: str,
    *,
    hand_dir: Optional[str | Path] = None,
    seed: int = 42,
    per_family: int = GENERATED_PER_FAMILY,
) -> list[Case]:
    """Every case of the benchmark for `split`, resolved against that split's questions of
    `data_dir`: clean, the hand-written ones of `hand_dir/<split>.jsonl` (val and test; none with
    `hand_dir=None`; the benchmark's are in eval/realistic/data), and the generated ones. `split="train"` is the training-data mode: clean and
    generated cases from the train split only (nothing is written by hand for train). Only the
    given split's file is read."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} (val: dev cases, test: test cases, train: generated training cases)")
    questions = [r["question"] for r in load_split(data_dir, split)]
    cases = clean_cases(questions, split)
    if split != "train" and hand_dir is not None:
        path = Path(hand_dir) / f"{split}.jsonl"
        cases += resolve_cases(load_hand_cases(path, split), questions, split, where=str(path))
    cases += generate_cases(questions, split, seed=seed, per_family=per_family)
    return resolve_cases(cases, questions, split)
