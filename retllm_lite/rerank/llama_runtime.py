"""A llama.cpp text model + mtmd projector, loaded through llama-cpp-python's C bindings.

Holds the handles and the low-level operations the scorer needs: chat-template rendering
(``chat_template``), multimodal tokenisation, decoding token runs and pre-encoded image
chunks on given sequences, reading logits, and finding the token an answer starts with
after the generation prompt. Files are checked (``gguf_header``) before llama.cpp opens
them; a tokenised prompt is ``mtmd_chunks.Chunks``.

Capacity: the context is sized from the prompts (``reserve``: the image chunks' token
counts are known once a prompt is tokenised, before anything is decoded) unless ``n_ctx``
is given; an image's tokens must fit one ``n_batch`` only where mtmd decodes them with
non-causal attention (Gemma3); ``max_image_tokens`` is mtmd's per-image token budget
(``image_max_tokens``: mtmd resizes the image, aspect ratio kept, to multiples of
patch x merge, as transformers' ``smart_resize`` does). By default the Qwen-VL family gets
its authors' budget, 256 to 512 tokens per image (min_pixels 256*28*28, max_pixels
512*28*28); other models keep mtmd's own sizing (Gemma3: always 256; SmolVLM: tiles up to
the processor's longest edge). An explicit budget applies to every dynamic-resolution
projector; 0 keeps mtmd's own limits everywhere.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retllm_lite.cpu import physical_cores
from retllm_lite.errors import BadInput, BadModelFile, require
from retllm_lite.rerank import llama_log
from retllm_lite.rerank.chat_template import ChatFormat, ChatRenderer, Messages
from retllm_lite.rerank.gguf_header import check_vlm_files
from retllm_lite.rerank.llama_build import runtime_version, use_extra_buffers
from retllm_lite.rerank.mtmd_chunks import CHUNK_IMAGE, Chunk, Chunks

# Qwen2-VL's authors' processor budget (README): min_pixels 256*28*28, max_pixels 512*28*28.
DEFAULT_MAX_IMAGE_TOKENS = 512
QWEN_MIN_IMAGE_TOKENS = 256
_QWEN_PROJECTORS = ("qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger")
_AUTO_CTX_START = 2048
_CTX_STEP = 256
_SPACE_MARKS = {"\u2581": " ", "\u0120": " ", "\u010a": "\n"}  # SentencePiece / byte-level BPE
_ANSWER_PROBE = "Answer True or False."


class LlamaRuntime:
    """Loaded model, context and mtmd context. Not thread-safe; one call at a time."""

    def __init__(
        self,
        model_path: str | Path,
        mmproj_path: str | Path | None,
        *,
        n_ctx: int | None = None,
        n_batch: int = 512,
        n_seq: int = 1,
        n_threads: int | None = None,
        max_image_tokens: int | None = None,
        kv_type: str = "f16",
        flash_attn: bool = False,
        extra_buffers: bool | None = None,
        verbose: bool = False,
        capture: Any = None,
    ):
        """``capture`` (an ``early_exit.LayerCapture``) becomes the context's eval callback."""
        self.model_path = Path(model_path)
        self.mmproj_path = Path(mmproj_path) if mmproj_path is not None else None
        self.model_info, self.mmproj_info = check_vlm_files(model_path, mmproj_path)
        self.llama = require("llama_cpp", "rerank", "VLM reranking")
        self.mtmd = require("llama_cpp.mtmd_cpp", "rerank", "VLM reranking")
        if kv_type not in ("f16", "f32"):
            raise BadInput(f"kv_type must be f16 or f32, not {kv_type}")
        if n_seq < 1 or n_batch < 1 or (n_ctx is not None and n_ctx < n_batch):
            raise BadInput("need n_seq >= 1, n_batch >= 1 and n_ctx >= n_batch")
        if max_image_tokens is not None and max_image_tokens < 0:
            raise BadInput(
                f"max_image_tokens must be 0 (the model's own) or more, not {max_image_tokens}",
                hint="e.g. 512 (Qwen2-VL's authors' budget)",
            )
        llama, mtmd = self.llama, self.mtmd
        self._model = self._ctx = self._mctx = None
        self._batch: Any = None
        self._renderers: dict[str, ChatRenderer] = {}
        self._answers: dict[tuple[str, str], tuple[str, int]] = {}
        llama_log.install(verbose)
        llama_log.clear()
        llama.llama_backend_init()
        threads = n_threads or physical_cores()  # SMT siblings share a core's SIMD units
        self.n_threads = threads

        mparams = llama.llama_model_default_params()
        mparams.n_gpu_layers = 0
        mparams.use_extra_bufts = use_extra_buffers(llama) if extra_buffers is None else extra_buffers
        self._model = llama.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self._model:
            raise BadModelFile(
                f"llama.cpp cannot load {self.model_path}: {llama_log.last_error()}",
                hint="download or convert the model again",
            )
        self.vocab = llama.llama_model_get_vocab(self._model)
        self.n_vocab = int(llama.llama_vocab_n_tokens(self.vocab))

        self.n_ctx_train = int(llama.llama_model_n_ctx_train(self._model))
        # One candidate at a time (n_seq 1): a unified cache, the candidate's cells follow
        # the prefix's exactly as in a fresh evaluation, so scores are bit-identical to it.
        # Several at once: one stream per sequence (seq_cp copies the prefix's stream), so
        # each candidate still sees the same cell layout; only kernel shapes change.
        self.unified = n_seq == 1
        self.n_batch = n_batch
        self.n_seq = n_seq
        self._kv_type = llama.GGML_TYPE_F32 if kv_type == "f32" else llama.GGML_TYPE_F16
        self.capture = capture
        self._flash_attn = flash_attn
        self.auto_ctx = n_ctx is None  # sized from the prompts (``reserve``)
        start = n_ctx if n_ctx is not None else max(n_batch, min(_AUTO_CTX_START, self.n_ctx_train))
        self.n_ctx = 0
        self._new_context(start)

        mp = mtmd.mtmd_context_params_default()
        mp.use_gpu = False
        mp.n_threads = threads
        mp.print_timings = False
        mp.warmup = False
        # mtmd's default (auto) turns flash attention on for the vision encoder, which casts
        # K and V to f16: up to 6e-4 relative error in the image embeddings (measured on the
        # tiny Gemma3 against transformers). Off unless asked for, as on the text side.
        mp.flash_attn_type = 1 if flash_attn else 0
        qwen = self.mmproj_info.metadata.get("clip.projector_type") in _QWEN_PROJECTORS
        if max_image_tokens is None:
            max_image_tokens = DEFAULT_MAX_IMAGE_TOKENS if qwen else 0
        self.max_image_tokens: int | None = max_image_tokens or None  # None: mtmd's own
        self.min_image_tokens: int | None = None
        if self.max_image_tokens is not None:
            mp.image_max_tokens = self.max_image_tokens
            if qwen:
                self.min_image_tokens = min(QWEN_MIN_IMAGE_TOKENS, self.max_image_tokens)
                mp.image_min_tokens = self.min_image_tokens
        self._mctx = mtmd.mtmd_init_from_file(str(self.mmproj_path).encode(), self._model, mp)
        if not self._mctx:
            self.close()
            raise BadModelFile(
                f"llama.cpp cannot load the projector {self.mmproj_path} for {self.model_path}: "
                f"{llama_log.last_error()}",
                hint="use the mmproj converted from the same checkpoint as the model",
            )
        if not mtmd.mtmd_support_vision(self._mctx):
            self.close()
            raise BadModelFile(f"{self.mmproj_path} does not support image input")
        self.marker = (mtmd.mtmd_default_marker() or b"<__media__>").decode()
        self.n_embd = int(llama.llama_model_n_embd_inp(self._model))
        self._batch = llama.llama_batch_init(n_batch, 0, 1)
        self._no_callback = mtmd.mtmd_helper_post_decode_callback()

    def _new_context(self, n_ctx: int) -> None:
        """Create the llama context for prompts of up to ``n_ctx`` cells (per sequence)."""
        llama = self.llama
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = n_ctx if self.unified else n_ctx * (self.n_seq + 1)
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch  # non-causal image embeddings decode in one ubatch
        cparams.n_seq_max = self.n_seq + 1
        cparams.kv_unified = self.unified
        cparams.swa_full = True  # keep every cell so sequences can be copied and trimmed
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.no_perf = True
        # Flash attention off: on CPU it is not faster at these lengths and its f16
        # accumulation makes results depend on batch layout (fast vs naive path).
        cparams.flash_attn_type = 1 if self._flash_attn else 0
        cparams.type_k = self._kv_type
        cparams.type_v = self._kv_type
        if self.capture is not None:  # early-exit capture (early_exit.LayerCapture)
            cparams.cb_eval = self.capture.callback
            cparams.cb_eval_user_data = None
        self._ctx = llama.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise BadModelFile(
                f"llama.cpp cannot create a {n_ctx}-token context for {self.model_path}: "
                f"{llama_log.last_error()}",
                hint="pass a smaller --n-ctx or --max-image-tokens",
            )
        self.n_ctx = n_ctx  # tokens one prompt (prefix + candidate) may take
        self.mem = llama.llama_get_memory(self._ctx)

    def image_settings(self) -> dict[str, Any]:
        """What decides the projector's output for a picture, besides the mmproj file."""
        return {
            "runtime": runtime_version(self.llama, self.mtmd),
            "image_tokens": [self.min_image_tokens, self.max_image_tokens],
            "vision_flash_attn": self._flash_attn,
        }

    def reserve(self, n_cells: int) -> bool:
        """Room for a prompt of ``n_cells`` KV cells; True if the context was re-created (empty).

        With ``n_ctx`` given, a longer prompt is a ``BadInput``; else the context grows (at
        least doubling, in steps of 256, up to the model's training context).
        """
        self._live()
        if n_cells <= self.n_ctx:
            return False
        if not self.auto_ctx:
            raise BadInput(
                f"the prompt takes {n_cells} tokens, more than n_ctx ({self.n_ctx})",
                hint="pass a larger --n-ctx (n_ctx=), or none to size the context from the prompt",
            )
        if n_cells > self.n_ctx_train:
            raise BadInput(
                f"the prompt takes {n_cells} tokens, more than {self.model_path.name} was trained "
                f"for ({self.n_ctx_train})",
                hint="lower --max-image-tokens or shorten the prompt",
            )
        size = min(self.n_ctx_train, max(-(-n_cells // _CTX_STEP) * _CTX_STEP, 2 * self.n_ctx))
        self.llama.llama_free(self._ctx)
        self._ctx = None
        self._new_context(size)
        return True

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        llama, mtmd = self.llama, self.mtmd
        if self._batch is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None
        if self._mctx:
            mtmd.mtmd_free(self._mctx)
            self._mctx = None
        if self._ctx:
            llama.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama.llama_model_free(self._model)
            self._model = None

    @property
    def closed(self) -> bool:
        return not self._ctx

    def _live(self) -> None:
        if self.closed:
            raise BadInput("this scorer has been closed")

    # -- text -----------------------------------------------------------------------------

    def chat_template(self) -> str | None:
        tmpl = self.llama.llama_model_chat_template(self._model, None)
        return tmpl.decode() if tmpl else None

    def builtin_templates(self) -> list[str]:
        """Names of llama.cpp's built-in chat formats (``llama_chat_builtin_templates``)."""
        llama = self.llama
        n = llama.llama_chat_builtin_templates(None, 0)
        arr = (ctypes.c_char_p * max(1, n))()
        n = llama.llama_chat_builtin_templates(arr, n)
        return [arr[i].decode() for i in range(max(0, n))]

    def chat_renderer(self, template: str) -> ChatRenderer:
        """The renderer for ``template`` (the model's Jinja template, or a built-in name)."""
        renderer = self._renderers.get(template)
        if renderer is None:
            renderer = self._renderers[template] = ChatRenderer(
                template,
                self._builtin_render,
                special_tokens=self._special_token_texts(),
                add_bos=bool(self.llama.llama_vocab_get_add_bos(self.vocab)),
                builtin_names=self.builtin_templates(),
            )
        return renderer

    def chat_format(self, template: str) -> ChatFormat:
        return self.chat_renderer(template).format

    def apply_chat_template(
        self, template: str, messages: Messages, *, add_generation_prompt: bool = True
    ) -> str:
        """Render ``messages`` with ``template`` (see ``chat_template``)."""
        try:
            return self.chat_renderer(template).render(messages, add_generation_prompt)
        except BadModelFile:
            raise
        except Exception as exc:  # the model's Jinja template raised (raise_exception, ...)
            raise BadInput(
                f"the chat template of {self.model_path} cannot render this prompt: {exc}",
                hint="pass chat_template= with a built-in name such as 'chatml', or change the prompt",
            ) from None

    def _special_token_texts(self) -> dict[str, str]:
        llama, vocab = self.llama, self.vocab
        out = {}
        for name, fn in (("bos_token", llama.llama_vocab_bos), ("eos_token", llama.llama_vocab_eos),
                         ("pad_token", llama.llama_vocab_pad)):  # fmt: skip
            tok = int(fn(vocab))
            if 0 <= tok < self.n_vocab:
                out[name] = self.token_text(tok)
        return out

    def _builtin_render(self, template: str, messages: Messages, add_generation_prompt: bool) -> str:
        """llama.cpp's ``llama_chat_apply_template`` (its built-in formats, picked by heuristic)."""
        llama = self.llama
        arr = (llama.llama_chat_message * len(messages))(
            *[llama.llama_chat_message(r.encode(), c.encode()) for r, c in messages]
        )
        size = 4096 + sum(len(c) for _, c in messages) * 2
        tmpl = template.encode()
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = llama.llama_chat_apply_template(tmpl, arr, len(messages), add_generation_prompt, buf, size)
            if n < 0:
                raise BadModelFile(
                    f"llama.cpp does not recognise the chat template of {self.model_path}",
                    hint="pass chat_template= with a built-in name such as 'gemma' or 'chatml'",
                )
            if n <= size:
                return buf.raw[:n].decode("utf-8")
            size = n + 1
        raise BadModelFile(f"cannot render the chat template of {self.model_path}")

    def tokenize_text(
        self, text: str, *, add_special: bool = False, parse_special: bool = False
    ) -> list[int]:
        raw = text.encode()
        cap = len(raw) + 8
        buf = (self.llama.llama_token * cap)()
        n = self.llama.llama_tokenize(self.vocab, raw, len(raw), buf, cap, add_special, parse_special)
        if n < 0:
            raise BadInput(f"cannot tokenize {text!r}")
        return [int(buf[i]) for i in range(n)]

    def token_text(self, token: int) -> str:
        raw = self.llama.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def answer_token(self, word: str | int, template: str) -> int:
        """The token the model emits first when it answers ``word``, in the chat's context.

        The prompt is rendered with ``template`` once with the generation prompt and once
        with ``word`` as the assistant's reply; both are tokenised as the scorer tokenises
        prompts, and the first token the answered one adds is the answer token. After
        ChatML's ``assistant\\n`` or Gemma's ``model\\n`` that is usually "True"; after
        SmolVLM's ``Assistant:`` it is " True". An int is taken as a token id as is.
        """
        if isinstance(word, int):
            if not 0 <= word < self.n_vocab:
                raise BadInput(f"token id {word} is outside the vocabulary ({self.n_vocab})")
            return word
        lead, tok = self.answer_start(word, template)
        if lead:
            raise BadModelFile(
                f"after the chat template of {self.model_path} the answer {word!r} starts with a "
                f"separate {lead!r} token",
                hint="pass the answer token's id or exact piece (true_token= / false_token=)",
            )
        return tok

    def answer_start(self, word: str, template: str) -> tuple[str, int]:
        """``(lead, token)``: whitespace tokenised on its own before the answer, then its token.

        ``lead`` is "" unless the tokenizer splits the space the template writes before the
        answer off the answer itself (SmolVLM's ``Assistant:`` then " 1" with digits split
        from spaces): then the prompt must end with ``lead`` for ``token`` to be next.
        """
        key = (word, template)
        if key in self._answers:
            return self._answers[key]
        user = [("user", _ANSWER_PROBE)]
        asked = self.apply_chat_template(template, user)
        answered = self.apply_chat_template(
            template, [*user, ("assistant", word)], add_generation_prompt=False
        )
        prompt = self._prompt_tokens(asked)
        full = self._prompt_tokens(answered)
        hint = "pass the answer token's id or exact piece (true_token= / false_token=)"
        if full[: len(prompt)] != prompt or len(full) == len(prompt):
            raise BadModelFile(
                f"the chat template of {self.model_path} does not continue its generation prompt "
                f"with the answer {word!r}",
                hint=hint,
            )
        k = len(prompt)
        while k < len(full) - 1 and not self._plain_piece(full[k]).strip():
            k += 1
        lead = "".join(self._plain_piece(t) for t in full[len(prompt) : k])
        start = self._plain_piece(full[k]).lstrip()
        if (
            not start
            or not word.startswith(start)
            or (lead and self._prompt_tokens(asked + lead) != full[:k])
        ):
            raise BadModelFile(
                f"after the chat template of {self.model_path} the answer {word!r} does not start "
                f"a token (the next token is {self._plain_piece(full[len(prompt)])!r})",
                hint=hint,
            )
        self._answers[key] = (lead, full[k])
        return self._answers[key]

    def _plain_piece(self, token: int) -> str:
        piece = self.token_text(token)
        for mark, plain in _SPACE_MARKS.items():
            piece = piece.replace(mark, plain)
        return piece

    def _prompt_tokens(self, text: str) -> list[int]:
        """Token ids of a rendered prompt, as mtmd tokenises it (special tokens, BOS)."""
        with self.tokenize(text, []) as chunks:
            return [t for ch in chunks.items for t in ch.tokens]

    # -- multimodal tokenisation ----------------------------------------------------------

    def make_bitmap(self, width: int, height: int, data: bytes | None, image_id: str) -> Any:
        mtmd = self.mtmd
        if data is None:
            bmp = mtmd.mtmd_bitmap_init(width, height, None)  # placeholder: counts tokens only
        else:
            buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
            bmp = mtmd.mtmd_bitmap_init(width, height, buf)
        if not bmp:
            raise BadInput(f"cannot create a {width}x{height} bitmap")
        mtmd.mtmd_bitmap_set_id(bmp, image_id.encode())
        return bmp

    def tokenize(self, text: str, bitmaps: Sequence[Any], *, add_special: bool = True) -> Chunks:
        """mtmd-tokenise a rendered prompt; bitmaps fill the media markers in order."""
        self._live()
        mtmd = self.mtmd
        handle = mtmd.mtmd_input_chunks_init()
        raw = text.encode()
        inp = mtmd.mtmd_input_text()
        inp.text = raw
        inp.text_len = len(raw)
        inp.add_special = add_special
        inp.parse_special = True
        arr = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
        res = mtmd.mtmd_tokenize(self._mctx, handle, ctypes.byref(inp), arr, len(bitmaps))
        if res != 0:
            mtmd.mtmd_input_chunks_free(handle)
            raise BadInput(f"cannot tokenize the prompt (mtmd error {res}: {llama_log.last_error()})")
        return Chunks(mtmd, handle)

    def free_bitmap(self, bmp: Any) -> None:
        self.mtmd.mtmd_bitmap_free(bmp)

    # -- image encoding -------------------------------------------------------------------

    def encode_image_chunks(self, chunks: Chunks) -> list[np.ndarray]:
        """Run the vision encoder on every image chunk; copies of the embeddings, in order."""
        mtmd = self.mtmd
        out = []
        for ch in chunks.items:
            if ch.kind != CHUNK_IMAGE:
                continue
            self._check_image_fits(ch)
            if mtmd.mtmd_encode_chunk(self._mctx, ch.handle) != 0:
                raise BadModelFile(
                    f"the projector {self.mmproj_path} failed to encode an image: {llama_log.last_error()}"
                )
            ptr = mtmd.mtmd_get_output_embd(self._mctx)
            emb = np.ctypeslib.as_array(ptr, shape=(ch.n_tokens * self.n_embd,))
            out.append(emb.reshape(ch.n_tokens, self.n_embd).copy())
        return out

    def _check_image_fits(self, ch: Chunk) -> None:
        """Non-causal image attention (Gemma3) needs the whole image in one ubatch (= n_batch).

        Causal models (Qwen2-VL, SmolVLM) decode an image's embeddings in n_batch pieces.
        """
        if ch.n_tokens > self.n_batch and self.mtmd.mtmd_decode_use_non_causal(self._mctx, ch.handle):
            raise BadInput(
                f"an image takes {ch.n_tokens} tokens, which {self.model_path.name} decodes in one "
                f"batch, but n_batch is {self.n_batch}",
                hint=f"pass --n-batch {ch.n_tokens} (n_batch=) or a smaller --max-image-tokens",
            )

    # -- decoding -------------------------------------------------------------------------

    def clear(self) -> None:
        self.llama.llama_memory_clear(self.mem, True)

    def seq_cp(self, src: int, dst: int) -> None:
        self.llama.llama_memory_seq_cp(self.mem, src, dst, -1, -1)

    def seq_rm(self, seq: int, p0: int = -1) -> None:
        self.llama.llama_memory_seq_rm(self.mem, seq, p0, -1)

    def state_seq_get(self, seq: int) -> bytes:
        """The KV state of one sequence (its cells, positions, K and V), as bytes."""
        llama = self.llama
        size = int(llama.llama_state_seq_get_size(self._ctx, seq))
        buf = (ctypes.c_uint8 * size)()
        n = int(llama.llama_state_seq_get_data(self._ctx, buf, size, seq))
        return bytes(buf[:n])

    def state_seq_set(self, seq: int, data: bytes) -> bool:
        """Restore a state from ``state_seq_get`` into (empty) ``seq``; False if it does not fit."""
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return int(self.llama.llama_state_seq_set_data(self._ctx, buf, len(data), seq)) > 0

    def eval_chunks(self, chunks: Chunks) -> np.ndarray:
        """The naive path: decode every chunk on seq 0 (encoding images), logits of the last."""
        for ch in chunks.items:
            if ch.kind == CHUNK_IMAGE:
                self._check_image_fits(ch)
        new_pos = self.llama.llama_pos(0)
        res = self.mtmd.mtmd_helper_eval_chunks(
            self._mctx, self._ctx, chunks.handle, 0, 0, self.n_batch, True, ctypes.byref(new_pos)
        )
        if res != 0:
            raise BadInput(
                f"llama.cpp failed to evaluate the prompt ({res}: {llama_log.last_error()})",
                hint="try a larger n_ctx",
            )
        return self.logits(-1)

    def decode_tokens(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """Decode ``(token, pos, seq, want_logits)`` entries, at most n_batch at once."""
        if len(entries) > self.n_batch:
            raise ValueError("too many tokens for one batch")
        b = self._batch
        b.n_tokens = len(entries)
        for i, (tok, pos, seq, want) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1 if want else 0
        res = self.llama.llama_decode(self._ctx, b)
        if res != 0:
            raise BadInput(
                f"llama.cpp failed to decode a batch ({res}: {llama_log.last_error()})",
                hint="try a larger n_ctx",
            )

    def decode_image(self, chunk: Chunk, embd: np.ndarray, pos: int, seq: int) -> int:
        """Decode pre-encoded image embeddings at ``pos`` on ``seq``; returns the next pos."""
        self._check_image_fits(chunk)
        if embd.shape != (chunk.n_tokens, self.n_embd) or embd.dtype != np.float32:
            raise BadInput("cached image embeddings do not fit this model")
        data = np.ascontiguousarray(embd)
        new_pos = self.llama.llama_pos(0)
        res = self.mtmd.mtmd_helper_decode_image_chunk(
            self._mctx,
            self._ctx,
            chunk.handle,
            data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            pos,
            seq,
            self.n_batch,
            ctypes.byref(new_pos),
            self._no_callback,
            None,
        )
        if res != 0:
            raise BadInput(
                f"llama.cpp failed to decode an image ({res}: {llama_log.last_error()})",
                hint="try a larger n_ctx",
            )
        return int(new_pos.value)

    def logits(self, index: int) -> np.ndarray:
        ptr = self.llama.llama_get_logits_ith(self._ctx, index)
        if not ptr:
            raise BadInput("llama.cpp returned no logits")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)
