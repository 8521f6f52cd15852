"""GPTQConfig: how a checkpoint is quantized, as Hugging Face writes it in config.json.

``quantization_config = {"quant_method": "gptq", "bits": 4, "group_size": 128,
"desc_act": false, "sym": true, "damp_percent": 0.01, "checkpoint_format": "gptq"}``
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

BITS = (2, 3, 4, 8)


def _bad(name, value, allowed, exc=ValueError):
    return exc(f"quantization_config.{name}={value!r}: expected {allowed}")


@dataclass(frozen=True)
class GPTQConfig:
    """Bits per weight, input columns per group (-1: one group per output row), act-order
    (``desc_act``), symmetric grid (``sym``) and GPTQ's dampening (``damp_percent``)."""

    bits: int = 4
    group_size: int = 128
    desc_act: bool = False
    sym: bool = True
    damp_percent: float = 0.01

    def __post_init__(self):
        if isinstance(self.bits, bool) or self.bits not in BITS:
            raise _bad("bits", self.bits, "one of 2, 3, 4, 8")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or (
                self.group_size != -1 and self.group_size < 1):
            raise _bad("group_size", self.group_size, "an int >= 1, or -1 (per output row)")
        for name in ("desc_act", "sym"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, getattr(self, name), "a bool", TypeError)
        if not isinstance(self.damp_percent, (int, float)) or not 0 < self.damp_percent < 1:
            raise _bad("damp_percent", self.damp_percent, "a float in (0, 1)")

    def num_groups(self, in_features: int) -> int:
        """Groups along the input dimension: ceil(in / group_size), as Hugging Face's GPTQ
        layout has it (the last group is smaller when group_size does not divide in; the
        default model's 576 hidden features make 4.5 groups of 128)."""
        if self.group_size == -1:
            return 1
        if self.group_size > in_features:
            raise _bad("group_size", self.group_size,
                       f"at most the layer's {in_features} input features, or -1")
        return -(-in_features // self.group_size)

    def group_width(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size

    def to_hf(self) -> dict:
        return {"quant_method": "gptq", **asdict(self), "checkpoint_format": "gptq"}

    @classmethod
    def from_hf(cls, d: dict) -> "GPTQConfig":
        """Read config.json's quantization_config; refuse what we cannot run."""
        if not isinstance(d, dict):
            raise _bad("", d, "a dict", TypeError)
        method = d.get("quant_method")
        if method != "gptq":
            raise _bad("quant_method", method, "'gptq' (the only method folo_edu loads)")
        fmt = d.get("checkpoint_format", "gptq")
        if fmt != "gptq":
            raise _bad("checkpoint_format", fmt, "'gptq' (zeros stored minus one)")
        missing = [k for k in ("bits", "group_size") if k not in d]
        if missing:
            raise _bad(missing[0], None, "a value (it is missing)")
        return cls(bits=d["bits"], group_size=d["group_size"],
                   desc_act=d.get("desc_act", False), sym=d.get("sym", True),
                   damp_percent=d.get("damp_percent", 0.01))
