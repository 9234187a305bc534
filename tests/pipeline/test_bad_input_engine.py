"""Bad questions through `build_query_engine(...).query(question)` on the session's tiny system.

The matrix: empty and whitespace-only questions are refused with a clear error before any work;
a 100k-character question never reaches a model unbounded (retrieval truncates it to
`retrieve.max_query_chars`, a language model refuses it with `PromptTooLongError` naming its
context window); non-English and emoji questions answer normally with valid sources; a question
that is not text is refused. Fixtures: tiny_config (tests/conftest.py), with one Components per
module as in tests/pipeline/test_engine.py.
"""

from __future__ import annotations

import math
import re
import time

import pytest

from pipeline import Components, build_query_engine
from pipeline.engine import NOT_FOUND_ANSWER, QuestionError
from pipeline.errors import UserFacingError
from pipeline.models import PromptTooLongError

LONG_QUESTION = ("How does a hash table handle collisions when many keys share a bucket? " * 1500)[:100_000]
FOREIGN_QUESTIONS = {
    "cjk": "哈希表如何处理冲突？",
    "emoji": "🙂🚀🔥",
    "mixed": "Qu'est-ce qu'un B-arbre? 🌳 Как работает хеш-таблица?",
}


@pytest.fixture(scope="module")
def components(tiny_config):
    return Components(tiny_config)


@pytest.fixture(scope="module")
def kb_ids(tiny_config):
    """Ids of every node of the session's knowledge base: a valid source is one of them."""
    from pipeline.index import open_index

    kb = open_index(tiny_config)
    try:
        return set(kb.nodes)
    finally:
        kb.close()


def ask(config, components, system, question, **kwargs):
    return build_query_engine(config, system, components=components, **kwargs).query(question)


def assert_valid_sources(response, kb_ids, top_k):
    """1..top_k sources, each a node of the knowledge base with text and a finite score; every
    citation [n] in the answer points at one of them."""
    assert 1 <= len(response.source_nodes) <= top_k
    for hit in response.source_nodes:
        assert hit.node.node_id in kb_ids
        assert hit.node.get_content().strip()
        assert hit.score is not None and math.isfinite(hit.score)
    cited = [int(n) for n in re.findall(r"\[(\d+)\]", response.response or "")]
    assert all(1 <= n <= len(response.source_nodes) for n in cited)


# ------------------------------------------------------------------ empty and whitespace


@pytest.mark.parametrize("question", ["", "   ", "\n\t \u3000"])
@pytest.mark.parametrize("system", ["vanilla", "nn_answer", "full"])
def test_empty_or_whitespace_question_is_refused_before_any_work(tiny_config, system, question):
    fresh = Components(tiny_config)  # nothing loaded yet: proves the refusal comes first
    with pytest.raises(QuestionError, match="the question is empty; ask a question with some text in it") as info:
        ask(tiny_config, fresh, system, question)
    assert isinstance(info.value, UserFacingError) and isinstance(info.value, ValueError)
    assert fresh._cache == {} and fresh._kb is None  # no model, no index opened


@pytest.mark.parametrize("question", [None, 42, ["What is a B-tree?"]])
def test_a_question_that_is_not_text_is_refused(tiny_config, components, question):
    with pytest.raises(QuestionError, match="the question must be text"):
        ask(tiny_config, components, "nn_answer", question)


# ------------------------------------------------------------------ 100k characters


def test_long_question_is_truncated_for_retrieval_and_answered_without_a_language_model(tiny_config, components, kb_ids):
    with pytest.warns(UserWarning, match=r"query of 100000 characters truncated to its first 2000 \(retrieve.max_query_chars\)"):
        response = ask(tiny_config, components, "nn_answer", LONG_QUESTION)
    assert_valid_sources(response, kb_ids, 1)
    assert response.response == response.source_nodes[0].node.metadata["answer"]
    assert "collision" in response.response.lower()  # retrieval still found the right topic


@pytest.mark.parametrize("system", ["vanilla", "rag_vanilla", "full"])
@pytest.mark.parametrize("streaming", [False, True])
def test_long_question_is_refused_by_the_language_model_naming_its_context_window(tiny_config, components, system, streaming):
    started = time.perf_counter()
    with pytest.raises(PromptTooLongError) as info:
        response = ask(tiny_config, components, system, LONG_QUESTION, streaming=streaming)
        if streaming:
            "".join(response.response_gen)  # the generator runs when the answer is read
    message = str(info.value)
    assert re.search(r"the prompt is \d{5} tokens long and \d+ more are to be generated, over the 2048-token context window of ", message), message
    assert "shorten the question" in message and isinstance(info.value, UserFacingError)
    assert time.perf_counter() - started < 60  # refused before generating: no quadratic attention over 50k tokens


def test_a_question_that_fits_still_answers(tiny_config, components, kb_ids):
    question = "How does a hash table handle collisions? " * 20  # 800 characters: fits 2048 tokens with passages
    response = ask(tiny_config, components, "rag_vanilla", question)
    assert isinstance(response.response, str)
    assert_valid_sources(response, kb_ids, tiny_config.generator.context_top_k)


# ------------------------------------------------------------------ non-English and emoji


@pytest.mark.parametrize("kind", sorted(FOREIGN_QUESTIONS))
@pytest.mark.parametrize("system", ["nn_answer", "rag_vanilla", "full"])
def test_non_english_and_emoji_questions_answer_with_valid_sources(tiny_config, components, kb_ids, kind, system):
    question = FOREIGN_QUESTIONS[kind]
    response = ask(tiny_config, components, system, question)
    assert isinstance(response.response, str)
    meta = response.metadata
    assert meta["system"] == system and meta["rounds"] and meta["rounds"][0]["retrieved"]
    if response.response.startswith(NOT_FOUND_ANSWER):  # the agent may decline; then it cites nothing
        assert response.source_nodes == [] and meta["not_found"]
        return
    top_k = 1 if system == "nn_answer" else (tiny_config.rerank.top_n if system == "full" else tiny_config.generator.context_top_k)
    assert_valid_sources(response, kb_ids, top_k)
    if system == "full":  # the rewriter ran on the question as typed (its passage quotes it)
        rewrite = meta["rewrites"][0]
        assert rewrite["mode"] == "hyde" and (rewrite["method"] == "fallback" or question in rewrite["texts"][0])
