"""folo_edu: an educational vLLM-style inference engine. This file is the public API."""
__version__ = "0.1.0"

import os as _os

import torch as _torch

# Without CUDA, Triton kernels can only run in Triton's interpreter, and Triton fixes
# that choice when it is first imported (transformers and torch.compile import it too),
# so it is made here, before anything else can. See folo_edu/attention/triton_kernels.py.
if not _torch.cuda.is_available():
    _os.environ.setdefault("TRITON_INTERPRET", "1")

from folo_edu.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from folo_edu.models.default_model import download_model
from folo_edu.outputs import CompletionOutput, RequestOutput
from folo_edu.request import Request, RequestStatus
from folo_edu.sampling_params import RequestOutputKind, SamplingParams

__all__ = [
    "__version__", "LLM", "LLMEngine", "SamplingParams", "RequestOutputKind",
    "RequestOutput", "CompletionOutput", "Request", "RequestStatus", "ModelConfig",
    "CacheConfig", "SchedulerConfig", "EngineConfig", "download_model",
]


def __getattr__(name):
    # LLM and LLMEngine pull in the model code; import them only when asked for.
    if name == "LLM":
        from folo_edu.engine.llm import LLM

        return LLM
    if name == "LLMEngine":
        from folo_edu.engine.llm_engine import LLMEngine

        return LLMEngine
    raise AttributeError(f"module 'folo_edu' has no attribute {name!r}")
