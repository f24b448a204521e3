"""Render a chat prompt the way the model's own chat template does.

A GGUF carries the model's Jinja chat template (``tokenizer.chat_template``). llama.cpp's
``llama_chat_apply_template`` does not run Jinja: it matches the template against a list
of built-in formats by a few substrings and renders that format in C++. The match can lose
what the template does: Qwen2-VL's template opens every conversation without a system
message with ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>``, which
llama.cpp's built-in "chatml" leaves out.

So the model's template is rendered with jinja2 in a sandbox set up as transformers'
``apply_chat_template`` sets it up (trim_blocks, lstrip_blocks, loopcontrols,
``raise_exception``, ``strftime_now``, a non-escaping ``tojson``, ``{% generation %}``),
message content given as a string, or as ``[{"type": "text", "text": ...}]`` for templates
that only read typed content (SmolVLM's). A leading BOS text is dropped when the tokenizer
adds BOS itself (as llama.cpp's own Jinja path does). llama.cpp's built-in heuristic is
used when a built-in name is asked for, or when the model's template cannot be rendered
here (no jinja2, a template error, or the prompt text not found in the output); the
``ChatFormat`` says which and why, for ``--explain``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

Messages = Sequence[tuple[str, str]]
BuiltinRender = Callable[[str, Messages, bool], str]
_PROBE = "retllm-probe-7f3a"  # a string no template writes by itself


@dataclass(frozen=True)
class ChatFormat:
    """How prompts are rendered: the model's Jinja template, or a llama.cpp built-in."""

    source: Literal["jinja", "builtin"]
    template: str  # the Jinja source, or the template/name handed to llama.cpp
    builtin: str | None = None  # the built-in format llama.cpp renders (when known)
    reason: str | None = None  # why the built-in is used
    content: Literal["string", "parts"] = "string"

    def describe(self) -> str:
        if self.source == "jinja":
            return "chat template: the model's own (Jinja, rendered as transformers does)"
        name = f"'{self.builtin}'" if self.builtin else "(unidentified)"
        return (
            f"chat template: llama.cpp's built-in {name} heuristic, not the model's Jinja "
            f"template ({self.reason})"
        )


def _environment() -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask tag): the body."""

        tags: ClassVar[set[str]] = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Callable[[], str]) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:  # fmt: skip
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ChatRenderer:
    """Renders messages with one chat format; ``builtin`` is llama.cpp's renderer."""

    def __init__(
        self,
        template: str,
        builtin: BuiltinRender,
        *,
        special_tokens: dict[str, str],
        add_bos: bool,
        builtin_names: Sequence[str] = (),
    ):
        self._builtin = builtin
        self._tokens = special_tokens
        self._bos = special_tokens.get("bos_token", "") if add_bos else ""
        self._compiled: Any = None
        self.format = self._choose(template, builtin_names)

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        if self.format.source == "builtin":
            return self._builtin(self.format.template, messages, add_generation_prompt)
        return self._jinja(messages, add_generation_prompt, self.format.content)

    # -- choosing ---------------------------------------------------------------------------

    def _choose(self, template: str, builtin_names: Sequence[str]) -> ChatFormat:
        if template in builtin_names or ("{{" not in template and "{%" not in template):
            return ChatFormat("builtin", template, builtin=template, reason="asked for by name")
        try:
            self._compiled = _environment().from_string(template)
        except ImportError:
            return self._fallback(template, builtin_names, "jinja2 is not installed")
        except Exception as exc:  # jinja2.TemplateSyntaxError and friends
            return self._fallback(template, builtin_names, f"jinja2 cannot compile it: {exc}")
        last = "the rendered prompt does not contain the message text"
        for content in ("string", "parts"):
            try:
                ask = self._jinja([("user", _PROBE + " u")], True, content)
                answered = self._jinja(
                    [("user", _PROBE + " u"), ("assistant", _PROBE + " a")], False, content
                )
            except Exception as exc:
                last = f"jinja2 cannot render it: {exc}"
                continue
            if _PROBE + " u" in ask and all(_PROBE + s in answered for s in (" u", " a")):
                return ChatFormat("jinja", template, content=content)  # type: ignore[arg-type]
        return self._fallback(template, builtin_names, last)

    def _fallback(self, template: str, names: Sequence[str], reason: str) -> ChatFormat:
        return ChatFormat("builtin", template, builtin=self._identify(template, names), reason=reason)

    def _identify(self, template: str, names: Sequence[str]) -> str | None:
        """The built-in llama.cpp renders for this template: the one whose output it matches."""
        probe = [("user", _PROBE)]
        try:
            want = self._builtin(template, probe, True)
        except Exception:
            return None
        for name in names:
            try:
                if self._builtin(name, probe, True) == want:
                    return name
            except Exception:
                continue
        return None

    # -- jinja --------------------------------------------------------------------------------

    def _jinja(self, messages: Messages, add_generation_prompt: bool, content: str) -> str:
        msgs = [
            {"role": r, "content": c if content == "string" else [{"type": "text", "text": c}]}
            for r, c in messages
        ]
        text = self._compiled.render(
            messages=msgs, add_generation_prompt=add_generation_prompt, **self._tokens
        )
        if self._bos and text.startswith(self._bos):
            text = text[len(self._bos) :]  # the tokenizer adds BOS itself
        return text
