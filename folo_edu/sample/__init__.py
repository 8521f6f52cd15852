"""Sampling: turn the model's logits into the next token of each request."""
from folo_edu.sample.logits_processors import (apply_min_p, apply_min_tokens, apply_penalties,
                                               apply_temperature, apply_top_k, apply_top_p)
from folo_edu.sample.sampler import (Sampler, SamplerOutput, SamplingMetadata, compute_logprobs,
                                     make_generator)

__all__ = [
    "Sampler", "SamplerOutput", "SamplingMetadata", "compute_logprobs", "make_generator",
    "apply_penalties", "apply_min_tokens", "apply_temperature", "apply_min_p", "apply_top_k",
    "apply_top_p",
]
