"""The model-independent parts of the fine stage: ranking rule, fusion, entropy, prompts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retllm_lite.errors import BadInput
from retllm_lite.rerank.logits import answer_probs, choice_probs, softmax, topk_entropy
from retllm_lite.rerank.prompts import (
    LISTWISE_MAX,
    Modality,
    PromptTemplate,
    Slot,
    default_template,
    enhance_side,
    modality,
    render_listwise,
)
from retllm_lite.rerank.scorer import Enhance, Item, PairScore, PassScores, rank_order


def ps(p_true: float, entropy: float, p_false: float | None = None, vocab: float | None = None) -> PairScore:
    """A score; the full-vocabulary entropy defaults to the top-10 one (2 nats scale aside)."""
    return PairScore(
        p_true, 1.0 - p_true if p_false is None else p_false, entropy, entropy if vocab is None else vocab
    )


def test_paper_rule_truncates_to_two_decimals_as_the_authors_code():
    # int(p * 100) / 100: 0.819 and 0.816 -> 0.81 (rounding: 0.82), 0.811 -> 0.81
    scores = [ps(0.819, 0.6), ps(0.816, 0.2), ps(0.90, 0.9), ps(0.811, 0.4), ps(0.10, 0.0)]
    order = rank_order(scores, rule="paper")
    assert [i for i, _ in order] == [2, 1, 3, 0, 4]  # the 0.81 tie: lower entropy first
    assert [v for _, v in order] == [0.9, 0.81, 0.81, 0.81, 0.1]
    rounded = rank_order(scores, rule="rounded")  # 0.82, 0.82, 0.81: a different order
    assert [i for i, _ in rounded] == [2, 1, 0, 3, 4]
    assert [v for _, v in rounded] == [0.9, 0.82, 0.82, 0.81, 0.1]


def test_truncation_is_exactly_the_authors_float_expression():
    from retllm_lite.rerank.scorer import truncate2

    for p in (0.29, 0.57, 0.999999, 0.0049, 0.5, 1.0, 0.0):
        assert truncate2(p) == int(p * 100) / 100
    assert truncate2(0.29) == 0.28  # 0.29 * 100 = 28.999999999999996 in binary floating point
    assert truncate2(0.999) == 0.99 and round(0.999, 2) == 1.0


def test_paper_rule_breaks_ties_by_full_vocabulary_entropy_rounded_by_top10():
    # both truncate/round to 0.70; the two entropies disagree on which is surer
    a = ps(0.701, 0.2, vocab=3.0)  # flat tail over the vocabulary, peaked top-10
    b = ps(0.702, 0.5, vocab=1.0)
    assert [i for i, _ in rank_order([a, b], rule="paper")] == [1, 0]
    assert [i for i, _ in rank_order([a, b], rule="rounded")] == [0, 1]
    assert [i for i, _ in rank_order([a, b], rule="paper", tie_break=False)] == [0, 1]


def test_raw_rule_uses_unrounded_probability_then_entropy():
    scores = [ps(0.812, 0.60), ps(0.809, 0.20), ps(0.812, 0.10)]
    assert [i for i, _ in rank_order(scores, rule="raw")] == [2, 0, 1]


def test_normalized_rule_uses_true_over_true_plus_false():
    # Same P(True), different P(False): the normalised score separates them.
    scores = [ps(0.30, 0.5, p_false=0.60), ps(0.30, 0.5, p_false=0.10), ps(0.50, 0.5, p_false=0.45)]
    order = rank_order(scores, rule="normalized")
    assert [i for i, _ in order] == [1, 2, 0]
    assert order[0][1] == pytest.approx(0.30 / 0.40)
    assert scores[1].score == pytest.approx(0.75)


def test_full_ties_keep_input_order():
    scores = [ps(0.5, 0.3), ps(0.5, 0.3), ps(0.5, 0.3)]
    assert [i for i, _ in rank_order(scores)] == [0, 1, 2]


def test_fusion_formula_mixes_min_max_normalised_clip_scores():
    scores = [ps(0.20, 0.1), ps(0.60, 0.1), ps(0.40, 0.1)]
    clip = [0.31, 0.21, 0.26]  # normalised: 1.0, 0.0, 0.5
    order = rank_order(scores, rule="raw", fusion=0.5, clip_scores=clip)
    fused = {i: v for i, v in order}
    assert fused[0] == pytest.approx(0.5 * 1.0 + 0.5 * 0.20)
    assert fused[1] == pytest.approx(0.5 * 0.0 + 0.5 * 0.60)
    assert fused[2] == pytest.approx(0.5 * 0.5 + 0.5 * 0.40)
    assert [i for i, _ in order] == [0, 2, 1]
    # alpha = 0 is the VLM alone, alpha = 1 the CLIP order alone.
    assert [i for i, _ in rank_order(scores, rule="raw", fusion=0.0, clip_scores=clip)] == [1, 2, 0]
    assert [i for i, _ in rank_order(scores, rule="raw", fusion=1.0, clip_scores=clip)] == [0, 2, 1]


def test_fusion_with_equal_clip_scores_keeps_the_vlm_order():
    scores = [ps(0.2, 0.1), ps(0.6, 0.1)]
    order = rank_order(scores, rule="raw", fusion=0.3, clip_scores=[0.5, 0.5])
    assert [i for i, _ in order] == [1, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "best"}, "unknown ranking rule"),
        ({"fusion": 1.5, "clip_scores": [0.1, 0.2]}, "fusion weight"),
        ({"fusion": 0.5}, "one CLIP score per candidate"),
        ({"fusion": 0.5, "clip_scores": [0.1]}, "one CLIP score per candidate"),
    ],
)
def test_rank_order_rejects_bad_options(kwargs, message):
    with pytest.raises(BadInput, match=message):
        rank_order([ps(0.1, 0.1), ps(0.2, 0.2)], **kwargs)


def test_pair_score_is_normalised_and_finite():
    s = PairScore(0.2, 0.6, 0.5, 1.0)
    assert s.score == pytest.approx(0.25)
    assert PassScores(0.2, 0.6, 0.5, 1.0).score == pytest.approx(0.25)
    assert PairScore(0.0, 0.0, 0.5, 1.0).score == 0.5
    with pytest.raises(FloatingPointError):
        PairScore(float("nan"), 0.1, 0.1, 0.1)
    with pytest.raises(FloatingPointError):
        PairScore(0.1, 0.1, 0.1, float("inf"))


def test_enhance_parse():
    assert Enhance.parse(None) == Enhance("off")
    assert Enhance.parse("always") == Enhance("always")
    assert Enhance.parse(True) == Enhance("always")
    assert Enhance.parse("gated") == Enhance("gated", 0.75)
    assert Enhance.parse("gated:0.6") == Enhance("gated", 0.6)
    assert Enhance.parse("gated") == Enhance("gated", 0.75, "binary")  # the default signal
    assert Enhance.parse("gated:0.6:top10") == Enhance("gated", 0.6, "top10")
    assert Enhance.parse("gated:top10") == Enhance("gated", 0.75, "top10")
    assert Enhance.parse("gated:0.6", signal="top10") == Enhance("gated", 0.6, "top10")
    for e in (Enhance("gated", 0.6, "top10"), Enhance("gated"), Enhance("off"), Enhance("always")):
        assert Enhance.parse(e.name) == e
    for bad in ("sometimes", "always:0.3", "gated:high", "always:top10"):
        with pytest.raises(BadInput):
            Enhance.parse(bad)


def test_binary_gate_fires_when_unsure_and_top10_gate_cannot_on_a_peaked_answer():
    """At the final layer of an instruction-tuned model the mass sits on True/False."""
    vocab = 1000
    for p_true, fires in ((0.5, True), (0.6, True), (0.75, True), (0.80, False), (0.95, False)):
        logits = np.full(vocab, -30.0)
        logits[1], logits[2] = math.log(p_true * 0.99), math.log((1 - p_true) * 0.99)
        a = answer_probs(logits, 1, 2)
        assert Enhance("gated").fires(a) is fires, p_true
        # the final-layer top-10 entropy stays below log 2 / log 10 ~ 0.30: never above 0.75
        assert a.entropy < 0.31 and not Enhance("gated", signal="top10").fires(a)
    assert Enhance("gated", 0.75).gate_value(PassScores(0.5, 0.5, 0.1, 0.7)) == pytest.approx(1.0)
    assert Enhance("always").fires(PassScores(0.99, 0.0, 0.0, 0.0))
    assert not Enhance("off").fires(PassScores(0.5, 0.5, 1.0, 9.0))


def test_vocab_entropy_is_the_authors_formula():
    from retllm_lite.rerank.logits import vocab_entropy

    rng = np.random.default_rng(1)
    logits = rng.normal(size=500) * 3
    p = softmax(logits)
    a = answer_probs(logits, 3, 4)
    assert a.vocab_entropy == pytest.approx(float(-(p * np.log(p + 1e-10)).sum()), rel=1e-12)
    assert vocab_entropy(np.full(8, 1 / 8)) == pytest.approx(math.log(8), rel=1e-8)


def test_normalised_top10_entropy_definition():
    assert topk_entropy(np.full(50, 1 / 50)) == pytest.approx(1.0)
    one_hot = np.zeros(50)
    one_hot[7] = 1.0
    assert topk_entropy(one_hot) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(size=300) * 2)
    top = np.sort(p)[-10:]
    q = top / top.sum()
    assert topk_entropy(p) == pytest.approx(float(-(q * np.log(q)).sum() / math.log(10)))


def test_answer_and_choice_probabilities_from_logits():
    logits = np.array([0.0, 2.0, 1.0, -1.0, 3.0])
    a = answer_probs(logits, true_id=1, false_id=2)
    p = np.exp(logits) / np.exp(logits).sum()
    assert a.p_true == pytest.approx(p[1])
    assert a.p_false == pytest.approx(p[2])
    c = choice_probs(logits, [3, 2, 1])
    assert c.index == 2  # token 1 has the highest logit among the choices
    assert sum(c.probs) == pytest.approx(1.0)
    assert c.mass == pytest.approx(p[1] + p[2] + p[3])
    with pytest.raises(FloatingPointError):
        answer_probs(np.array([0.0, np.nan]), 0, 1)


def test_item_coercion():
    assert Item.coerce("a dog").text == "a dog"
    assert Item.coerce(__file__).text == __file__  # strings are text, never paths
    from pathlib import Path

    assert Item.coerce(Path(__file__)).image == Path(__file__)
    with pytest.raises(BadInput):
        Item()


def test_every_pairing_has_a_template_with_the_right_slots():
    def sides(label):
        return {
            Modality.TEXT: (f"{label} words", False),
            Modality.IMAGE: (None, True),
            Modality.IMAGE_TEXT: (f"{label} text", True),
        }

    for qm, (qt, qi) in sides("query").items():
        for cm, (ct, ci) in sides("candidate").items():
            assert modality(qt, qi) == qm
            parts = default_template(qm, cm).render(qt, ct, query_has_image=qi, candidate_has_image=ci)
            slots = [p for p in parts if isinstance(p, Slot)]
            assert slots == [Slot("query")] * qi + [Slot("candidate")] * ci
            text = "".join(p for p in parts if isinstance(p, str))
            assert text.count("Answer True or False.") == 1
            for t in (qt, ct):
                if t:
                    assert t in text
            # The authors' order: images first (query's, then candidate's), texts, question last.
            fields = [i for i, p in enumerate(parts) if p in (qt, ct) and p]
            images = [i for i, p in enumerate(parts) if isinstance(p, Slot)]
            assert all(i < j for i in images for j in fields), (qm, cm, parts)
            assert [parts[i] for i in images] == sorted(
                (parts[i] for i in images), key=lambda s: s.side != "query"
            )
            assert isinstance(parts[-1], str) and parts[-1].endswith("Answer True or False.")
            assert all(i < len(parts) - 1 for i in fields + images)


def test_enhancement_appends_the_candidate_image_else_the_query_image():
    assert enhance_side(candidate_has_image=True, query_has_image=True) == "candidate"
    assert enhance_side(candidate_has_image=False, query_has_image=True) == "query"
    assert enhance_side(candidate_has_image=False, query_has_image=False) is None
    t = default_template(Modality.IMAGE, Modality.TEXT)
    parts = t.render(None, "a cat", query_has_image=True, candidate_has_image=False, enhance="query")
    assert parts[-1] == Slot("query")
    assert parts.count(Slot("query")) == 2


@pytest.mark.parametrize("query", [Modality.TEXT, Modality.IMAGE, Modality.IMAGE_TEXT])
@pytest.mark.parametrize("candidate", [Modality.IMAGE, Modality.IMAGE_TEXT, Modality.TEXT])
def test_the_second_image_copy_comes_after_the_question(query, candidate):
    has = {Modality.TEXT: (True, False), Modality.IMAGE: (False, True), Modality.IMAGE_TEXT: (True, True)}
    (qt, qi), (ct, ci) = has[query], has[candidate]
    side = enhance_side(candidate_has_image=ci, query_has_image=qi)
    if side is None:
        return
    parts = default_template(query, candidate).render(
        "q words" if qt else None, "c words" if ct else None,
        query_has_image=qi, candidate_has_image=ci, enhance=side,
    )  # fmt: skip
    copies = [i for i, p in enumerate(parts) if p == Slot(side)]
    assert len(copies) == 2
    between = "".join(p for p in parts[copies[0] + 1 : copies[1]] if isinstance(p, str))
    assert "Answer True or False." in between  # not right after the first copy
    assert copies[1] == len(parts) - 1


def test_custom_template_is_checked_against_the_pair():
    t = PromptTemplate("Q: {query_text}\nC: {candidate_image}\nMatch? Answer True or False.")
    parts = t.render("dogs", None, query_has_image=False, candidate_has_image=True)
    assert parts == ["Q: ", "dogs", "\nC: ", Slot("candidate"), "\nMatch? Answer True or False."]
    with pytest.raises(BadInput, match="candidate_text"):
        t.render("dogs", "a caption", query_has_image=False, candidate_has_image=True)
    with pytest.raises(BadInput, match="unknown placeholder"):
        PromptTemplate("{query} {candidate_image}").fields()
    # Braces inside user text are not placeholders.
    parts = t.render("{candidate_text}", None, query_has_image=False, candidate_has_image=True)
    assert parts[1] == "{candidate_text}"


def test_listwise_prompt_numbers_the_captions():
    parts = render_listwise(["a dog", "a cat", "a car"])
    text = "".join(p for p in parts if isinstance(p, str))
    assert "1. a dog\n2. a cat\n3. a car" in text
    assert parts.count(Slot("query")) == 1
    with pytest.raises(BadInput):
        render_listwise(["only one"])
    with pytest.raises(BadInput):
        render_listwise(["c"] * (LISTWISE_MAX + 1))
