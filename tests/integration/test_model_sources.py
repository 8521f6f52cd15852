"""M0: every model source resolves to a HF folder, and every bad one says what was tried."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from folo_edu import ModelConfig
from folo_edu.models.loader import (ModelSourceError, load_safetensors_state, resolve_config,
                                    resolve_model_path)
from folo_edu.models.tiny import TINY_CONFIGS


def model_config(*args, **kwargs):
    """A ModelConfig with its checkpoint found and attached (what the engine does)."""
    return resolve_config(ModelConfig(*args, **kwargs))


# ---- a tiny GGUF, written the way llama.cpp's converter writes a Llama -----------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 = pad, bos, eos
MERGES = ["h e", "l l"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")


def byte_level_vocab() -> list[str]:
    """Three special tokens, the 256 byte-level symbols, and one token per merge."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = bytes_to_unicode()
    return SPECIALS + [symbols[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES]


VOCAB_SIZE = len(byte_level_vocab())  # 261


def _permute(w, n_head):
    # llama.cpp stores q/k rows interleaved for its rope; transformers undoes this on load.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def write_tiny_gguf(hf_dir: Path, out: Path) -> Path:
    """Write the Llama checkpoint in ``hf_dir`` as an F32 GGUF with a byte-level tokenizer."""
    import gguf

    cfg = json.loads((hf_dir / "config.json").read_text())
    sd = {k: v.numpy() for k, v in load_safetensors_state(hf_dir).items()}
    vocab = byte_level_vocab()
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_dimension_count(cfg["hidden_size"] // nh)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(len(vocab))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab)
    w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(vocab) - 3))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if "lm_head.weight" in sd:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"attn_norm": "input_layernorm", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(cfg["num_hidden_layers"]):
        hf = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[hf + "self_attn.q_proj.weight"], nh))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[hf + "self_attn.k_proj.weight"], nkv))
        for ours, theirs in names.items():
            w.add_tensor(f"blk.{i}.{ours}.weight", sd[f"{hf}{theirs}.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


# ---- good sources -----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_local_hf_folder(tiny_model_dir, name):
    folder = tiny_model_dir(name)
    assert resolve_model_path(str(folder)) == folder
    mc = model_config(str(folder))
    spec = TINY_CONFIGS[name]
    assert mc.path == str(folder) and mc.num_layers == spec["num_hidden_layers"]
    assert mc.num_kv_heads == spec["num_key_value_heads"]
    assert mc.hf_config.architectures[0].lower().startswith(spec["arch"])


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_load_safetensors_state_matches_transformers(tiny_model_dir, name):
    from transformers import AutoModelForCausalLM

    folder = tiny_model_dir(name)
    state = load_safetensors_state(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    assert set(state) <= set(reference)
    missing = set(reference) - set(state)
    assert missing <= {"lm_head.weight"}  # only a tied lm_head is not stored
    for key, tensor in state.items():
        torch.testing.assert_close(tensor, reference[key], rtol=0, atol=0)


def test_hub_id_found_in_a_local_hf_cache(tiny_model_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--fake-org--tiny-llama"
    shutil.copytree(tiny_model_dir(), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    # huggingface_hub reads HF_HUB_CACHE once at import, so set both.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = resolve_model_path("fake-org/tiny-llama")
    assert path == repo / "snapshots" / commit
    assert model_config("fake-org/tiny-llama").num_layers == 2


@pytest.mark.parametrize("name,tied", [("llama-gqa2-tied", True), ("llama-gqa2-tied", False)])
def test_gguf_file_converts_to_the_same_model(tiny_model_dir, tmp_path, monkeypatch, name, tied):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("FOLO_EDU_CACHE", str(tmp_path / "cache"))
    hf_dir = tiny_model_dir(name, vocab_size=VOCAB_SIZE, tie_word_embeddings=tied)
    gguf_file = write_tiny_gguf(hf_dir, tmp_path / "tiny.gguf")
    folder = resolve_model_path(str(gguf_file))
    assert folder.is_relative_to(tmp_path / "cache" / "gguf")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()}
    ids = torch.tensor([[1, 40, 77, 120, 3, 200, 259, 260]])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(hf_dir)(ids).logits
        got = AutoModelForCausalLM.from_pretrained(folder)(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.decode(tok("hello world")["input_ids"]) == "hello world"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n")
    # The second time it is the cached folder, not a new conversion.
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path(str(gguf_file)) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert model_config(str(gguf_file)).max_model_len == 512


# ---- bad sources ------------------------------------------------------------------------

def _broken_copy(tiny_model_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model_dir(), tmp_path / "model"))


def test_hub_id_offline_says_what_was_tried():
    with pytest.raises(ModelSourceError) as excinfo:
        resolve_model_path("no-such-org/no-such-model")
    msg = str(excinfo.value)
    assert "model='no-such-org/no-such-model'" in msg
    assert "hub id" in msg and "HF_HUB_OFFLINE=1" in msg


@pytest.mark.parametrize("source", ["/no/such/folder", "./no_such_folder", "a/b/c"])
def test_missing_path(source):
    with pytest.raises(ModelSourceError, match="tried a local folder, but no such path exists"):
        resolve_model_path(source)


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelSourceError, match="tried a GGUF file, but no such file"):
        resolve_model_path(str(tmp_path / "absent.gguf"))


def test_corrupt_gguf_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLO_EDU_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00garbage" * 100)
    with pytest.raises(ModelSourceError, match="tried to read it as GGUF"):
        resolve_model_path(str(bad))


def test_not_a_model_source_type():
    with pytest.raises(TypeError, match="model=42: expected a folder"):
        resolve_model_path(42)


def test_folder_without_config(tiny_model_dir, tmp_path):
    folder = _broken_copy(tiny_model_dir, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(ModelSourceError, match="local HF folder, but it has no config.json"):
        model_config(str(folder))


def test_folder_without_safetensors(tiny_model_dir, tmp_path):
    folder = _broken_copy(tiny_model_dir, tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelSourceError, match=r"no \*.safetensors weights.*pytorch_model.bin"):
        resolve_model_path(str(folder))
    with pytest.raises(ModelSourceError, match="found none"):
        load_safetensors_state(folder)


def test_unsupported_architecture(tiny_model_dir, tmp_path):
    folder = _broken_copy(tiny_model_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError) as excinfo:
        model_config(str(folder))
    msg = str(excinfo.value)
    assert "architectures=['MistralForCausalLM'] is not supported" in msg
    assert "LlamaForCausalLM" in msg and "Qwen3ForCausalLM" in msg


def test_unreadable_config(tiny_model_dir, tmp_path):
    folder = _broken_copy(tiny_model_dir, tmp_path)
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(ModelSourceError, match="config.json could not be read"):
        model_config(str(folder))


def test_corrupt_safetensors(tiny_model_dir, tmp_path):
    folder = _broken_copy(tiny_model_dir, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\x13\x37 this is not a safetensors file" * 10)
    assert model_config(str(folder)).path == str(folder)  # the folder itself looks fine
    with pytest.raises(ModelSourceError) as excinfo:
        load_safetensors_state(folder)
    assert f"weights file {str(weights)!r}: tried to load it as safetensors" in str(excinfo.value)


def test_truncated_safetensors(tiny_model_dir, tmp_path):
    folder = _broken_copy(tiny_model_dir, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # an interrupted download
    with pytest.raises(ModelSourceError, match="model.safetensors"):
        load_safetensors_state(folder)


def test_tensor_in_two_shards(tiny_model_dir, tmp_path):
    folder = _broken_copy(tiny_model_dir, tmp_path)
    shutil.copy(folder / "model.safetensors", folder / "model-2.safetensors")
    with pytest.raises(ModelSourceError, match="also in another"):
        load_safetensors_state(folder)
