"""Incremental detokenization and stop strings: token ids in, text out, one token at a time.

Decoding one token at a time is wrong (a multi-byte character or a word piece may need
the next token too), and decoding everything every step is slow. We keep two offsets
into the token list, as vLLM does: prefix_offset..read_offset is text already emitted
(decoded again only to give the tokenizer context), read_offset.. is new. New text is
emitted only once it no longer ends in an incomplete character (U+FFFD).

Stop strings follow vLLM v1 (``vllm/v1/engine/detokenizer.py``: ``BaseIncrementalDetokenizer
.update``, ``get_next_output_text`` and ``check_stop_strings``; the meaning of the fields is
vLLM's ``SamplingParams`` documentation, ``vllm/sampling_params.py``). The rules:

1. A token that ended the sequence because it is EOS or one of ``stop_token_ids``
   (``stop_terminated``) adds no text, unless ``include_stop_str_in_output``.
2. Stop strings are looked for only once ``number of output tokens > min_tokens``, and
   only in text that is new since the last check (plus ``len(stop) - 1`` characters
   before it, so that a stop string spanning two steps is found): text made while
   ``min_tokens`` was not yet reached can never match a stop string on its own.
3. The stop strings are tried in the order given and the first one found wins (not the
   one that starts earliest): with ``stop=["b", "ab"]`` and new text ``"xab"``, ``"b"``
   wins and the text becomes ``"xa"``.
4. The text is cut at the start of the stop string, or at its end with
   ``include_stop_str_in_output``; anything after it, even in the same token, is dropped.
5. While a sequence runs, streamed text stops ``max(len(s) for s in stop) - 1``
   characters short of the end (it could be the start of a stop string that must not be
   shown); nothing is held back with ``include_stop_str_in_output`` or without stop
   strings. Once finished, everything left is handed out.
6. Without a tokenizer (``skip_tokenizer_init``) there is no text: ``update`` returns None.
"""
from __future__ import annotations

# How many tokens of context to decode before the new ones (vLLM uses 5 too).
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """The text of one sequence, built token by token, with its stop strings.

    ``IncrementalDetokenizer(tokenizer, prompt_token_ids, params)`` reads
    ``params.skip_special_tokens``, ``stop``, ``include_stop_str_in_output`` and
    ``min_tokens``. Feed each output token to ``update``; read ``output_text`` (the
    whole text so far) or ``take_delta`` (the part not handed out yet).
    """

    def __init__(self, tokenizer, prompt_token_ids: list[int], params):
        self.tokenizer = tokenizer
        self.skip = params.skip_special_tokens
        self.stop: list[str] = list(params.stop or [])
        self.include_stop = params.include_stop_str_in_output
        self.min_tokens = params.min_tokens
        # Only the prompt's last few tokens, as context for the first output tokens.
        self.token_ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        self.num_output_tokens = 0
        self.output_text = ""
        self.stop_string: str | None = None  # the stop string that ended the text, if any
        # Rule 5: chars of the end that a running sequence does not stream yet.
        self.holdback = (max(len(s) for s in self.stop) - 1
                         if self.stop and not self.include_stop else 0)
        self.emitted = 0  # chars of output_text already handed out as deltas

    def update(self, token_id: int, stop_terminated: bool) -> str | None:
        """Append one output token; return the stop string if the text now contains one.

        ``stop_terminated`` says the engine finished the sequence on this token because
        it is EOS or a stop token id: its text is then left out (rule 1).
        """
        self.num_output_tokens += 1
        if self.tokenizer is None or self.stop_string is not None:
            return None  # no text at all, or the text already ended at a stop string
        if stop_terminated and not self.include_stop:
            return None
        self.token_ids.append(token_id)
        new_text = self._unread_text()
        if not new_text or new_text.endswith("\ufffd"):
            return None  # nothing complete yet: wait for the next token
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        self.output_text += new_text
        if self.stop and self.num_output_tokens > self.min_tokens:  # rule 2
            return self._find_stop(len(new_text))
        return None

    def flush(self) -> None:
        """At the end, emit any tail still waiting to become a complete character."""
        if (self.tokenizer is None or self.stop_string is not None
                or self.read_offset == len(self.token_ids)):
            return
        self.output_text += self._unread_text()
        self.read_offset = len(self.token_ids)

    def _unread_text(self) -> str:
        """Text of the tokens after read_offset, decoded with the context before them."""
        decode = self.tokenizer.decode
        prefix = decode(self.token_ids[self.prefix_offset:self.read_offset],
                        skip_special_tokens=self.skip)
        full = decode(self.token_ids[self.prefix_offset:], skip_special_tokens=self.skip)
        return full[len(prefix):]

    def _find_stop(self, new_chars: int) -> str | None:
        """Rules 3 and 4: the first stop string (in list order) in the new text."""
        text = self.output_text
        for s in self.stop:
            # It must end inside the new text: start at most len(s) - 1 chars before it.
            i = text.find(s, max(0, len(text) - new_chars - len(s) + 1))
            if i != -1:
                self.output_text = text[:i + len(s) if self.include_stop else i]
                self.stop_string = s
                return s
        return None

    def take_delta(self, finished: bool) -> str:
        """The text not yet handed out (held back near the end unless finished)."""
        end = len(self.output_text) if finished else max(
            self.emitted, len(self.output_text) - self.holdback)
        delta = self.output_text[self.emitted:end]
        self.emitted = end
        return delta
