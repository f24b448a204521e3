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


def ps(p_true: float, entropy: float, p_false: float | None = None) -> PairScore:
    return PairScore(p_true, 1.0 - p_true if p_false is None else p_false, entropy)


def test_paper_rule_rounds_to_two_decimals_and_breaks_ties_by_lower_entropy():
    scores = [ps(0.812, 0.60), ps(0.809, 0.20), ps(0.90, 0.90), ps(0.806, 0.40), ps(0.10, 0.0)]
    order = rank_order(scores, rule="paper")
    # 0.812, 0.809, 0.806 all round to 0.81: lower entropy first.
    assert [i for i, _ in order] == [2, 1, 3, 0, 4]
    assert [v for _, v in order] == [0.9, 0.81, 0.81, 0.81, 0.1]


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
    s = PairScore(0.2, 0.6, 0.5)
    assert s.score == pytest.approx(0.25)
    assert PassScores(0.2, 0.6, 0.5).score == pytest.approx(0.25)
    assert PairScore(0.0, 0.0, 0.5).score == 0.5
    with pytest.raises(FloatingPointError):
        PairScore(float("nan"), 0.1, 0.1)


def test_enhance_parse():
    assert Enhance.parse(None) == Enhance("off")
    assert Enhance.parse("always") == Enhance("always")
    assert Enhance.parse(True) == Enhance("always")
    assert Enhance.parse("gated") == Enhance("gated", 0.75)
    assert Enhance.parse("gated:0.6") == Enhance("gated", 0.6)
    for bad in ("sometimes", "always:0.3", "gated:high"):
        with pytest.raises(BadInput):
            Enhance.parse(bad)


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
            # Query and question first, candidate last: all candidates share the prefix.
            first_candidate = next(
                i for i, p in enumerate(parts) if p == Slot("candidate") or (ct and p == ct)
            )
            before = "".join(p for p in parts[:first_candidate] if isinstance(p, str))
            assert "Answer True or False." in before
            assert all(p != Slot("query") and p != qt for p in parts[first_candidate:])


def test_enhancement_appends_the_candidate_image_else_the_query_image():
    assert enhance_side(candidate_has_image=True, query_has_image=True) == "candidate"
    assert enhance_side(candidate_has_image=False, query_has_image=True) == "query"
    assert enhance_side(candidate_has_image=False, query_has_image=False) is None
    t = default_template(Modality.IMAGE, Modality.TEXT)
    parts = t.render(None, "a cat", query_has_image=True, candidate_has_image=False, enhance="query")
    assert parts[-1] == Slot("query")
    assert parts.count(Slot("query")) == 2


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
