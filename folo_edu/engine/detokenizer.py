"""Incremental detokenization and stop strings: token ids in, text out, one token at a time.

Decoding one token at a time is wrong (a multi-byte character or a word piece may need
the next token too), and decoding everything every step is slow. We keep two offsets
into the token list, as vLLM does: prefix_offset..read_offset is text already emitted
(decoded again only to give the tokenizer context), read_offset.. is new. New text is
emitted only once it no longer ends in an incomplete character (U+FFFD).
"""
from __future__ import annotations

# How many tokens of context to decode before the new ones (vLLM uses 5 too).
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool,
                 stop: list[str], include_stop_str_in_output: bool):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.stop = stop
        self.include_stop = include_stop_str_in_output
        self.token_ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        self.output_text = ""
        # Streamed text stops this many chars short of the end, since they could be
        # the start of a stop string that must not be shown.
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.emitted = 0  # chars of output_text already handed out as deltas

    def add_token(self, token_id: int) -> str | None:
        """Append one token; return the stop string if the text now contains one."""
        if self.tokenizer is None:
            return None
        self.token_ids.append(token_id)
        new_text = self._unread_text()
        if not new_text or new_text.endswith("\ufffd"):
            return None  # nothing complete yet: wait for the next token
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        search_from = max(0, len(self.output_text) - self.holdback)
        self.output_text += new_text
        return self._find_stop(search_from)

    def flush(self) -> None:
        """At the end, emit any tail still waiting to become a complete character."""
        if self.tokenizer is None or self.read_offset == len(self.token_ids):
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

    def _find_stop(self, search_from: int) -> str | None:
        for s in self.stop:
            i = self.output_text.find(s, search_from)
            if i != -1:
                self.output_text = self.output_text[:i + (len(s) if self.include_stop else 0)]
                return s
        return None

    def take_delta(self, finished: bool) -> str:
        """The text not yet handed out (held back near the end unless finished)."""
        end = len(self.output_text) if finished else max(
            self.emitted, len(self.output_text) - self.holdback)
        delta = self.output_text[self.emitted:end]
        self.emitted = end
        return delta
