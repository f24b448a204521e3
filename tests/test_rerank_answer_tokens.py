"""Answer tokens are resolved in the chat's context; prompts follow the model's own template.

For each chat template the registry's models use (Qwen2-VL's ChatML, Gemma, SmolVLM /
Idefics3), on the tiny Gemma3, Qwen2-VL and SmolVLM: the "True"/"False" tokens are the ones
the tokenizer puts right after the generation prompt, and the rendered prompt is what
transformers' ``apply_chat_template`` renders from the same template.
"""

from __future__ import annotations

import pytest
from retllm_lite.quantize.tiny_qwen2vl import CHAT_TEMPLATE as QWEN2VL_TEMPLATE
from retllm_lite.quantize.tiny_qwen2vl import DEFAULT_SYSTEM
from retllm_lite.quantize.tiny_smolvlm import CHAT_TEMPLATE as SMOLVLM_TEMPLATE
from retllm_lite.quantize.tiny_vlm import CHAT_TEMPLATE as GEMMA_TEMPLATE

from retllm_lite.errors import BadModelFile
from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer
from retllm_lite.rerank.scorer import Item

TEMPLATES = {"gemma": GEMMA_TEMPLATE, "qwen2-vl chatml": QWEN2VL_TEMPLATE, "smolvlm": SMOLVLM_TEMPLATE}


@pytest.fixture(scope="module")
def models(tiny_vlm_f16, tiny_qwen2vl, tiny_smolvlm):
    return {"gemma3": tiny_vlm_f16, "qwen2vl": tiny_qwen2vl, "smolvlm": tiny_smolvlm}


def _scorer(files, template: str | None = None) -> LlamaMtmdScorer:
    return LlamaMtmdScorer(files.model, files.mmproj, chat_template=template, n_threads=1)


def _hf_render(template: str, messages: list[dict], add_generation_prompt: bool, tokens: dict) -> str:
    """transformers' own ``apply_chat_template`` rendering (its Jinja setup), for comparison."""
    from transformers.utils.chat_template_utils import render_jinja_template

    (text,), _ = render_jinja_template(
        conversations=[messages],
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        **tokens,
    )
    return text


def _content(template: str, text: str):
    return [{"type": "text", "text": text}] if template is SMOLVLM_TEMPLATE else text


def _tokens(scorer: LlamaMtmdScorer, text: str) -> list[int]:
    """Token ids of a rendered prompt as the scorer tokenises it (mtmd, special tokens, BOS)."""
    with scorer.rt.tokenize(text, []) as chunks:
        return [t for ch in chunks.items for t in ch.tokens]


def _piece(scorer: LlamaMtmdScorer, token: int) -> str:
    return scorer.rt.token_text(token).replace("\u2581", " ")


@pytest.mark.parametrize("model", ["gemma3", "qwen2vl", "smolvlm"])
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_answer_token_is_the_one_after_the_generation_prompt(models, model, name):
    """Independent of our renderer: transformers renders the conversation with the answer,
    llama.cpp tokenises it, and the token after the generation prompt is the answer token."""
    template = TEMPLATES[name]
    with _scorer(models[model], template) as s:
        bos = s.rt.token_text(s.rt.llama.llama_vocab_bos(s.rt.vocab))
        strip = bos if s.rt.llama.llama_vocab_get_add_bos(s.rt.vocab) else ""  # the tokenizer adds it
        tokens = {"bos_token": bos, "eos_token": s.rt.token_text(s.rt.llama.llama_vocab_eos(s.rt.vocab))}
        user = {"role": "user", "content": _content(template, "Is this a dog? Answer True or False.")}
        for word, token in (("True", s.true_id), ("False", s.false_id)):
            asked = _hf_render(template, [user], True, tokens)
            answer = {"role": "assistant", "content": _content(template, word)}
            answered = _hf_render(template, [user, answer], False, tokens)
            prompt = _tokens(s, asked.removeprefix(strip))
            full = _tokens(s, answered.removeprefix(strip))
            assert full[: len(prompt)] == prompt, name
            assert full[len(prompt)] == token, (name, _piece(s, full[len(prompt)]), _piece(s, token))
            piece = _piece(s, token)
            if name == "smolvlm":  # "Assistant:" is followed by " True"
                assert piece == " " + word
            elif model != "qwen2vl":  # "model\n" / "assistant\n" then "True", as written
                assert piece == word
            else:
                # llama.cpp's SentencePiece vocab without add_space_prefix=false (the
                # converter writes none for Qwen2-VL) puts a space after every special
                # token, and "\n" is one here: the model sees " True" after "assistant\n".
                assert piece == " " + word


@pytest.mark.parametrize("builtin", ["smolvlm", "chatml", "gemma"])
def test_answer_token_after_llama_cpp_builtin_templates(tiny_vlm_f16, builtin):
    """A built-in name renders with llama.cpp's own formatter; the answer follows it."""
    with _scorer(tiny_vlm_f16, builtin) as s:
        lead = " " if builtin == "smolvlm" else ""  # llama.cpp's smolvlm ends in "Assistant:"
        assert _piece(s, s.true_id) == lead + "True" and _piece(s, s.false_id) == lead + "False"
        if not lead:
            assert [_piece(s, t) for t in s.choice_tokens(3)] == ["1", "2", "3"]
        assert s.chat_format.source == "builtin" and s.chat_format.builtin == builtin


def test_qwen2vl_prompt_keeps_its_default_system_prompt(tiny_qwen2vl, vlm_images):
    with _scorer(tiny_qwen2vl) as s:
        rendered = s.render("a dog on the beach", Item(image=vlm_images[0]))
        assert rendered.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n")
        user = rendered.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        want = _hf_render(QWEN2VL_TEMPLATE, [{"role": "user", "content": user}], True, {})
        assert rendered == want
        # a system message of the prompt's own replaces the default, as in transformers
        messages = [("system", "Be brief."), ("user", user)]
        own = s.rt.apply_chat_template(s.chat_template, messages)
        assert DEFAULT_SYSTEM not in own and own.startswith("<|im_start|>system\nBe brief.<|im_end|>")
        assert s.chat_format.source == "jinja" and "the model's own" in s.chat_format.describe()


def test_gemma_prompt_equals_transformers_and_llama_cpp(tiny_vlm_f16, vlm_images):
    """Gemma's Jinja template and llama.cpp's built-in agree; BOS is left to the tokenizer."""
    with _scorer(tiny_vlm_f16) as jinja, _scorer(tiny_vlm_f16, "gemma") as builtin:
        q, c = Item(image=vlm_images[1]), Item(text="a red car")
        assert jinja.render(q, c) == builtin.render(q, c)
        assert jinja.layout(q, c) == builtin.layout(q, c)
        assert not jinja.render(q, c).startswith("<bos>")
        assert jinja.chat_format.source == "jinja" and builtin.chat_format.source == "builtin"


def test_listwise_digits_follow_the_space_smolvlm_puts_before_them(tiny_smolvlm, vlm_images, vlm_captions):
    """SmolVLM's answer is " 2", and its tokenizer splits the space off digits: the listwise
    prompt ends with that space, so the digit logits are read where the model emits one."""
    with _scorer(tiny_smolvlm) as s:
        layout = s.listwise_layout(vlm_images[0], vlm_captions[:3])
        assert _piece(s, layout[-1].tokens[-1]) == " " and _piece(s, layout[-1].tokens[-2]) == ":"
        assert [_piece(s, t) for t in s.choice_tokens(3)] == ["1", "2", "3"]
        assert s.rt.answer_start("2", s.chat_template)[0] == " "
        pick = s.pick_caption(vlm_images[0], vlm_captions[:3])
        assert 0 <= pick.index < 3 and 0 < pick.mass <= 1


def test_smolvlm_template_reads_typed_content(tiny_vlm_f16):
    """SmolVLM's template only reads [{"type": "text", ...}] content: the text is kept."""
    with _scorer(tiny_vlm_f16, SMOLVLM_TEMPLATE) as s:
        rendered = s.render("a cat", "a dog")
        assert rendered.startswith("<|im_start|>User: Query: a cat\n") and rendered.endswith(
            "<end_of_utterance>\nAssistant:"
        )
        assert s.chat_format.source == "jinja" and s.chat_format.content == "parts"


def test_explain_names_a_llama_cpp_builtin_and_why(tiny_vlm_f16, tiny_qwen2vl):
    broken = QWEN2VL_TEMPLATE.replace("{% endif %}", "", 1)  # not valid Jinja; still ChatML to llama.cpp
    with _scorer(tiny_qwen2vl, broken) as s:
        fmt = s.chat_format
        assert fmt.source == "builtin" and fmt.builtin == "chatml" and "jinja2" in fmt.reason
        text = fmt.describe()
        assert "llama.cpp's built-in 'chatml' heuristic, not the model's Jinja template" in text
        assert DEFAULT_SYSTEM not in s.render("a cat", "a dog")  # what the heuristic loses
    with _scorer(tiny_vlm_f16, "chatml") as s:
        assert "asked for by name" in s.chat_format.describe()


def test_an_answer_the_template_does_not_continue_is_an_error(tiny_vlm_f16):
    # the generation prompt says "model\n" but the answer turn is rendered as "bot\n"
    odd = GEMMA_TEMPLATE.replace(
        "'model' if message['role'] == 'assistant'", "'bot' if message['role'] == 'assistant'"
    )
    with pytest.raises(BadModelFile) as exc:
        _scorer(tiny_vlm_f16, odd)
    assert "true_token=" in str(exc.value) and len(str(exc.value).splitlines()) == 1


def test_image_slot_survives_every_template(models, vlm_images):
    """The media marker reaches mtmd whichever template renders the prompt."""
    for name, files in models.items():
        counts = set()
        for template in TEMPLATES.values():
            with _scorer(files, template) as s:
                layout = s.layout(Item(image=vlm_images[2]), "a red car")
                counts.add([seg.kind for seg in layout].count("image"))
                assert 0 < s.score_pairs(Item(image=vlm_images[2]), ["a red car"])[0].p_true < 1
        assert counts == {5 if name == "smolvlm" else 1}, name  # SmolVLM: 2 x 2 tiles + overview
