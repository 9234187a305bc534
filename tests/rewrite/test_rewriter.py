"""QueryRewriter logic with a scripted LlamaIndex LLM (the model is irrelevant here)."""

from __future__ import annotations

from typing import Any, Sequence

import pytest
from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.schema import QueryBundle

from rewrite import QueryRewriter, RewrittenQuery, split_clauses
from rewrite.prompts import DECOMPOSE_SYSTEM, HYDE_SYSTEM, MULTI_SYSTEM, hyde_training_example, parse_lines


class ScriptedLLM(CustomLLM):
    """Answers by the system prompt it sees; counts calls and remembers prompts."""

    replies: dict = {}
    calls: list = []

    def __init__(self, replies: dict[str, str]) -> None:
        super().__init__()
        self.replies = replies
        self.calls = []

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata()

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.calls.append(prompt)
        for marker, reply in self.replies.items():
            if marker in prompt:
                return CompletionResponse(text=reply)
        return CompletionResponse(text="")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise NotImplementedError


class BatchLLM(ScriptedLLM):
    """Exposes the batched path of pipeline.models.LocalCausalLM."""

    batches: list = []

    def render(self, messages: Sequence[Any]) -> str:
        return "\n".join(m.content for m in messages)

    def generate_batch(self, prompts, **kwargs):
        self.batches.append((list(prompts), kwargs))
        return [self.complete(p).text for p in prompts]


HYDE_REPLY = "A B-tree is a balanced search tree whose nodes hold many keys.\nQuestion: something else"


def test_none_mode_needs_no_model_and_keeps_the_question():
    rewriter = QueryRewriter(None, mode="none")
    bundle = rewriter.run("What is a B-tree?")
    assert isinstance(bundle, RewrittenQuery)
    assert bundle.query_str == "What is a B-tree?"
    assert bundle.custom_embedding_strs is None
    assert bundle.rewrite.mode == "none" and bundle.rewrite.texts == ()


def test_hyde_writes_a_passage_in_the_knowledge_base_format():
    llm = ScriptedLLM({HYDE_SYSTEM[:40]: HYDE_REPLY})
    bundle = QueryRewriter(llm, mode="hyde").run(QueryBundle("What is a B-tree?"))
    passage = "Question: What is a B-tree?\nAnswer: A B-tree is a balanced search tree whose nodes hold many keys."
    assert bundle.query_str == "What is a B-tree?"  # the reranker and generator see the original
    assert bundle.custom_embedding_strs == ["What is a B-tree?", passage]
    assert bundle.rewrite.method == "llm" and bundle.rewrite.texts == (passage,)


def test_rewrites_are_cached_per_model_mode_and_question():
    llm = ScriptedLLM({HYDE_SYSTEM[:40]: HYDE_REPLY, MULTI_SYSTEM[:30]: "1. What's a B tree?\n2. Define a B-tree."})
    rewriter = QueryRewriter(llm, mode="hyde", model_id="m1")
    first = rewriter.rewrite("What is a B-tree?")
    assert rewriter.rewrite("What is a B-tree?") is first
    assert len(llm.calls) == 1
    rewriter.rewrite("What is a B-tree?", mode="multi")
    assert len(llm.calls) == 2
    rewriter.rewrite("What is a heap?")
    assert len(llm.calls) == 3


def test_cache_is_bounded():
    llm = ScriptedLLM({HYDE_SYSTEM[:40]: "text"})
    rewriter = QueryRewriter(llm, cache_size=2)
    for q in ("What is one?", "What is two?", "What is three?"):
        rewriter.rewrite(q)
    rewriter.rewrite("What is one?")
    assert len(llm.calls) == 4  # the oldest entry was evicted


def test_multi_parses_numbered_phrasings_without_the_original():
    reply = "1. What is a B-tree?\n2) Define the B-tree data structure.\n- How is a B-tree organised?\n3. ok\n4. Define the B-tree data structure."
    bundle = QueryRewriter(ScriptedLLM({MULTI_SYSTEM[:30]: reply}), mode="multi", n_queries=3).run("What is a B-tree?")
    assert bundle.rewrite.texts == ("Define the B-tree data structure.", "How is a B-tree organised?")
    assert bundle.custom_embedding_strs == ["What is a B-tree?", *bundle.rewrite.texts]


def test_decompose_keeps_on_topic_llm_sub_questions():
    reply = "1. What is the difference between TCP and UDP?\n2. How does the TCP three-way handshake work?"
    question = "Compare TCP and UDP and explain the three-way handshake"
    made = QueryRewriter(ScriptedLLM({DECOMPOSE_SYSTEM[:40]: reply}), mode="decompose").rewrite(question)
    assert made.method == "llm" and len(made.texts) == 2


def test_decompose_falls_back_to_clauses_when_the_llm_wanders():
    reply = "1. What is the capital of France?\n2. Who wrote Hamlet?"
    question = "Compare TCP and UDP and explain the three-way handshake"
    bundle = QueryRewriter(ScriptedLLM({DECOMPOSE_SYSTEM[:40]: reply}), mode="decompose").run(question)
    assert bundle.rewrite.method == "clauses"
    assert bundle.rewrite.texts == ("Compare TCP and UDP.", "Explain the three-way handshake.")
    assert bundle.custom_embedding_strs is None  # sub-questions are retrieved one by one by the engine


def test_single_question_is_not_decomposed():
    made = QueryRewriter(ScriptedLLM({}), mode="decompose").rewrite("What is a B-tree?")
    assert made.texts == () and made.method == "fallback"


@pytest.mark.parametrize(
    ("question", "parts"),
    [
        ("What is paging? How does it differ from segmentation?", ["What is paging?", "How does it differ from segmentation?"]),
        ("Explain deadlock, and list the four Coffman conditions", ["Explain deadlock.", "List the four Coffman conditions."]),
        ("Compare TCP and UDP.", []),
        ("What are the pros and cons of B-trees and hash indexes?", []),
    ],
)
def test_split_clauses(question, parts):
    assert split_clauses(question, 3) == parts


def test_loader_is_called_lazily_once():
    made = []

    def loader():
        made.append(1)
        return ScriptedLLM({HYDE_SYSTEM[:40]: "x y z"})

    rewriter = QueryRewriter(loader, mode="hyde")
    assert made == []
    rewriter.rewrite("What is a heap?")
    rewriter.rewrite("What is a stack?")
    assert made == [1]


def test_rewrite_many_uses_one_batched_pass_for_uncached_questions():
    llm = BatchLLM({HYDE_SYSTEM[:40]: "answer text"})
    rewriter = QueryRewriter(llm, mode="hyde", max_new_tokens=17)
    rewriter.rewrite("What is a heap?")
    llm.batches.clear()
    results = rewriter.rewrite_many(["What is a heap?", "What is a stack?", "What is a queue?"])
    assert [r.question for r in results] == ["What is a heap?", "What is a stack?", "What is a queue?"]
    assert len(llm.batches) == 1 and len(llm.batches[0][0]) == 2
    assert llm.batches[0][1]["max_new_tokens"] == 17 and llm.batches[0][1]["temperature"] == 0.0


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_questions_are_refused(bad):
    with pytest.raises(ValueError, match="non-empty string"):
        QueryRewriter(ScriptedLLM({}), mode="hyde").rewrite(bad)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="mode 'hide' is not one of none, hyde, multi, decompose"):
        QueryRewriter(ScriptedLLM({}), mode="hide")
    with pytest.raises(ValueError, match="needs an llm"):
        QueryRewriter(None, mode="hyde")


def test_parse_lines_strips_labels_and_limits():
    text = "Question 1: What is RAM?\nSub-question: What is ROM?\n\n3. What is a cache?"
    assert parse_lines(text, original="x", limit=2) == ["What is RAM?", "What is ROM?"]


def test_training_pair_uses_the_inference_prompt():
    pair = hyde_training_example("What is a heap?", "A heap is a tree.")
    assert pair["prompt"].startswith(HYDE_SYSTEM)
    assert pair["prompt"].rstrip().endswith("Answer:")
    assert "Question: What is a heap?" in pair["prompt"]
    assert pair["completion"] == " A heap is a tree."
