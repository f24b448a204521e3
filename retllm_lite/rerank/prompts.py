"""Every prompt the reranker sends, in one place.

A template is plain text with placeholders: ``{query_text}``, ``{candidate_text}`` for
text and ``{query_image}``, ``{candidate_image}`` for where an image's embeddings go.
Visual enhancement appends ``enhance_suffix`` (by default ``"\\n{enhance_image}"``) after
the question, so the image is seen a second time after the question, right before the
answer (re-inserting the image into the prompt is this project's design: it
approximates the paper's feed-forward re-injection of visual tokens, it is not that
mechanism).

Order, as in the authors' code (``Codes/Qwen_vl.py``): in every user turn the images come
first (the query's, then the candidate's), then the texts, then the question. With an
image query (image -> text) the query image is then in the prefix all candidates share,
evaluated once; with image candidates (text -> image) each candidate's image sits right
after the chat header, so the state of "header + that image" does not depend on the
query and can be reused across queries.

Pairings follow the query/candidate modalities of M-BEIR style retrieval: each side is
text, image, or image+text, so nine pairings; all nine have a default template. The
answer words are "True" and "False": the scorer reads P("True") and P("False") from the
next-token distribution right after the model turn opens.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from retllm_lite.errors import BadInput

Side = Literal["query", "candidate"]


@dataclass(frozen=True)
class Slot:
    """Where one side's image goes in a rendered prompt."""

    side: Side


PromptPart = str | Slot  # literal text, or an image slot


class Modality(str, Enum):
    TEXT = "text"
    IMAGE = "image"
    IMAGE_TEXT = "image+text"


_QUESTION = "Answer True or False."

_TEMPLATES: dict[tuple[Modality, Modality], str] = {
    (Modality.TEXT, Modality.IMAGE): (
        f"Candidate image: {{candidate_image}}\nQuery: {{query_text}}\n"
        f"Does the candidate image match the query? {_QUESTION}"
    ),
    (Modality.TEXT, Modality.TEXT): (
        f"Query: {{query_text}}\nCandidate: {{candidate_text}}\n"
        f"Does the candidate match the query? {_QUESTION}"
    ),
    (Modality.TEXT, Modality.IMAGE_TEXT): (
        "Candidate image: {candidate_image}\nQuery: {query_text}\nCandidate text: {candidate_text}\n"
        f"Does the candidate match the query? {_QUESTION}"
    ),
    (Modality.IMAGE, Modality.TEXT): (
        f"Query image: {{query_image}}\nCaption: {{candidate_text}}\n"
        f"Does the caption describe the query image? {_QUESTION}"
    ),
    (Modality.IMAGE, Modality.IMAGE): (
        "Query image: {query_image}\nCandidate image: {candidate_image}\n"
        f"Does the candidate image show the same content as the query image? {_QUESTION}"
    ),
    (Modality.IMAGE, Modality.IMAGE_TEXT): (
        "Query image: {query_image}\nCandidate image: {candidate_image}\nCandidate text: {candidate_text}\n"
        f"Does the candidate match the query image? {_QUESTION}"
    ),
    (Modality.IMAGE_TEXT, Modality.TEXT): (
        "Query image: {query_image}\nQuery text: {query_text}\nCandidate: {candidate_text}\n"
        f"Does the candidate answer the query about the image? {_QUESTION}"
    ),
    (Modality.IMAGE_TEXT, Modality.IMAGE): (
        "Query image: {query_image}\nCandidate image: {candidate_image}\nModification: {query_text}\n"
        f"Does the candidate image show the query image with the modification? {_QUESTION}"
    ),
    (Modality.IMAGE_TEXT, Modality.IMAGE_TEXT): (
        "Query image: {query_image}\nCandidate image: {candidate_image}\n"
        "Query text: {query_text}\nCandidate text: {candidate_text}\n"
        f"Does the candidate match the query? {_QUESTION}"
    ),
}

DEFAULT_ENHANCE_SUFFIX = "\n{enhance_image}"
ANSWER_TRUE = "True"
ANSWER_FALSE = "False"

LISTWISE_TEMPLATE = (
    "Image: {query_image}\nCaptions:\n{captions}\n"
    "Which caption describes the image best? Answer with its number only."
)
LISTWISE_LINE = "{index}. {caption}"
LISTWISE_MAX = 9  # one digit token per choice: 1..9

_FIELDS = {"query_text", "candidate_text", "query_image", "candidate_image"}


def modality(text: str | None, has_image: bool) -> Modality:
    if has_image and text:
        return Modality.IMAGE_TEXT
    if has_image:
        return Modality.IMAGE
    if text:
        return Modality.TEXT
    raise BadInput("a query or candidate needs text, an image, or both")


@dataclass(frozen=True)
class PromptTemplate:
    """A user-message template; see the module doc for placeholders."""

    text: str
    enhance_suffix: str = DEFAULT_ENHANCE_SUFFIX
    system: str | None = None

    def fields(self) -> set[str]:
        names = {f for _, f, _, _ in string.Formatter().parse(self.text) if f}
        unknown = names - _FIELDS
        if unknown:
            raise BadInput(
                f"unknown placeholder(s) in prompt template: {sorted(unknown)}", hint=f"use {sorted(_FIELDS)}"
            )
        return names

    def render(
        self,
        query_text: str | None,
        candidate_text: str | None,
        *,
        query_has_image: bool,
        candidate_has_image: bool,
        enhance: Side | None = None,
    ) -> list[PromptPart]:
        """Split into literal text and image slots; ``enhance`` appends that image again."""
        names = self.fields()
        needed = {
            "query_text": bool(query_text),
            "candidate_text": bool(candidate_text),
            "query_image": query_has_image,
            "candidate_image": candidate_has_image,
        }
        for name, present in needed.items():
            if present and name not in names:
                raise BadInput(
                    f"the prompt template has no {{{name}}} but the pair has one",
                    hint="use a template written for this pairing",
                )
            if not present and name in names:
                raise BadInput(
                    f"the prompt template needs {{{name}}} but the pair has none",
                    hint="use a template written for this pairing",
                )
        texts = {"query_text": query_text or "", "candidate_text": candidate_text or ""}
        parts: list[PromptPart] = []
        source = self.text + (self.enhance_suffix if enhance else "")
        for literal, field, _, _ in string.Formatter().parse(source):
            if literal:
                parts.append(literal)
            if not field:
                continue
            if field in texts:
                parts.append(texts[field])
            elif field == "query_image":
                parts.append(Slot("query"))
            elif field == "candidate_image":
                parts.append(Slot("candidate"))
            elif field == "enhance_image" and enhance:
                parts.append(Slot(enhance))
            else:
                raise BadInput(f"unknown placeholder {{{field}}} in prompt template")
        return parts


def default_template(query: Modality, candidate: Modality) -> PromptTemplate:
    return PromptTemplate(_TEMPLATES[(query, candidate)])


def enhance_side(candidate_has_image: bool, query_has_image: bool) -> Side | None:
    """The image seen twice: the candidate's if it has one, else the query's, else none."""
    if candidate_has_image:
        return "candidate"
    if query_has_image:
        return "query"
    return None


def render_listwise(captions: list[str], template: str = LISTWISE_TEMPLATE) -> list[PromptPart]:
    """Image query + numbered captions (1..k); the answer is one digit token."""
    if not 2 <= len(captions) <= LISTWISE_MAX:
        raise BadInput(f"listwise scoring takes 2 to {LISTWISE_MAX} captions, got {len(captions)}")
    lines = "\n".join(LISTWISE_LINE.format(index=i + 1, caption=c) for i, c in enumerate(captions))
    parts: list[PromptPart] = []
    for literal, field, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(literal)
        if field == "query_image":
            parts.append(Slot("query"))
        elif field == "captions":
            parts.append(lines)
        elif field:
            raise BadInput(
                f"unknown placeholder {{{field}}} in listwise template",
                hint="use {query_image} and {captions}",
            )
    if Slot("query") not in parts:
        raise BadInput("the listwise template needs {query_image}")
    return parts
