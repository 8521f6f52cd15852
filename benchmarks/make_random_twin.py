"""Save a random-weight model with the default model's shapes (SmolLM2-135M: 30 layers,
hidden 576, 9 query / 3 KV heads, vocab 49152, tied embeddings) as a HF folder.

For machines that cannot download the default model (e.g. a GPU box without network):
its speed is the default model's speed, only its tokens are meaningless, and it has no
tokenizer, so folo_edu runs it without detokenization.

    python benchmarks/make_random_twin.py /tmp/smol_twin
    python -m folo_edu.cli bench --workload single --model /tmp/smol_twin --device cuda
"""
import sys

from folo_edu.models.tiny import make_tiny_model

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                    max_position_embeddings=8192, tie_word_embeddings=True)

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "smol_random_twin"
    print(make_tiny_model(out, "llama-gqa2-tied", **SMOLLM2_135M))
