"""M7: weight quantization. RTN and GPTQ, Hugging Face GPTQ checkpoints, perplexity.

    quantize(model, out_dir, method="gptq", bits=4, group_size=128, ...) -> folder
    LLM(model=folder)                      runs it (QuantLinear layers)
    perplexity(llm, text, window=512)      exp(mean NLL) from the engine's prompt logprobs
"""
from folo_edu.quantization.api import calibration_samples, perplexity, quantize
from folo_edu.quantization.quant_config import GPTQConfig

__all__ = ["GPTQConfig", "calibration_samples", "perplexity", "quantize"]
