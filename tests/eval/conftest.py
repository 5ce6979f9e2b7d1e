import pytest


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random-weight Llama with a byte vocabulary (260) and 4096 positions, saved like any HF model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(42)
    path = tmp_path_factory.mktemp("tiny")
    config = LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=257, eos_token_id=258, pad_token_id=256)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)
