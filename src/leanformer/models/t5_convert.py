"""Names, configs and weights of :class:`leanformer.models.t5.T5` in ``transformers.T5ForConditionalGeneration``'s
terms: the mapping behind :meth:`T5.to_hf`, :meth:`T5.from_hf` and :meth:`T5.from_pretrained_hf`.

Only the T5 v1.1 family converts (gated feed-forward, no tied head): ``google/t5-v1_1-*``, ``google/flan-t5-*``,
nanoT5 checkpoints. Original T5 (ReLU, tied embeddings with the d_model^-0.5 output scale) is refused with a
message naming the setting. The weights map one to one; only the names differ::

    shared                                   <-> shared
    encoder.block.0.layer.0.SelfAttention.relative_attention_bias <-> enc_bias.embedding
    encoder.block.i.layer.0.SelfAttention.{q,k,v,o} / layer_norm   <-> encoder.i.attn.{q,k,v,o} / attn_norm
    encoder.block.i.layer.1.DenseReluDense.{wi_0,wi_1,wo} / ...    <-> encoder.i.ff.{gate,up,down} / ff_norm
    decoder.block.i.layer.{0,1,2}  (self, EncDecAttention, FF)     <-> decoder.i.{self_*, cross_*, ff*}
    {encoder,decoder}.final_layer_norm, lm_head                     <-> enc_norm, dec_norm, lm_head

This module sits below ``t5.py`` and never imports it (the model class builds itself from what these functions
return), so the two do not import each other.
"""

from __future__ import annotations

import re

import torch

from leanformer.errors import ConfigError

_ACT_TO_HF = {"gelu": "gelu_new", "gelu_exact": "gelu", "silu": "silu", "relu": "relu"}
_HF_TO_ACT = {v: k for k, v in _ACT_TO_HF.items()} | {"gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu"}

_RULES = [  # (our regex, HF template)
    (r"shared\.weight", "shared.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"enc_norm\.weight", "encoder.final_layer_norm.weight"),
    (r"dec_norm\.weight", "decoder.final_layer_norm.weight"),
    (r"enc_bias\.embedding\.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    (r"dec_bias\.embedding\.weight", "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    (r"encoder\.(\d+)\.attn\.(q|k|v|o)\.weight", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (r"encoder\.(\d+)\.attn_norm\.weight", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (r"encoder\.(\d+)\.ff_norm\.weight", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"decoder\.(\d+)\.self_attn\.(q|k|v|o)\.weight", r"decoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (r"decoder\.(\d+)\.self_norm\.weight", r"decoder.block.\1.layer.0.layer_norm.weight"),
    (r"decoder\.(\d+)\.cross_attn\.(q|k|v|o)\.weight", r"decoder.block.\1.layer.1.EncDecAttention.\2.weight"),
    (r"decoder\.(\d+)\.cross_norm\.weight", r"decoder.block.\1.layer.1.layer_norm.weight"),
    (r"decoder\.(\d+)\.ff_norm\.weight", r"decoder.block.\1.layer.2.layer_norm.weight"),
]
_FF = {"gate": "wi_0", "up": "wi_1", "down": "wo"}


def hf_name(ours: str) -> str:
    """Hugging Face parameter name of one of our parameter names."""
    m = re.fullmatch(r"(encoder|decoder)\.(\d+)\.ff\.(gate|up|down)\.weight", ours)
    if m:
        sub = 1 if m[1] == "encoder" else 2
        return f"{m[1]}.block.{m[2]}.layer.{sub}.DenseReluDense.{_FF[m[3]]}.weight"
    for pat, tmpl in _RULES:
        if re.fullmatch(pat, ours):
            return re.sub(pat, tmpl, ours)
    raise KeyError(f"no Hugging Face name for parameter {ours!r}")


def config_to_hf(c):
    """A ``transformers.T5Config`` for our :class:`~leanformer.models.t5.T5Config` ``c``."""
    from transformers import T5Config as HFT5Config

    return HFT5Config(vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_layers=c.n_layers,
                      num_decoder_layers=c.decoder_layers, num_heads=c.n_heads,
                      relative_attention_num_buckets=c.rel_buckets,
                      relative_attention_max_distance=c.rel_max_distance, dropout_rate=c.dropout,
                      layer_norm_epsilon=c.norm_eps, feed_forward_proj=f"gated-{_ACT_TO_HF[c.ff_act]}",
                      tie_word_embeddings=False, pad_token_id=c.pad_token_id, eos_token_id=1,
                      decoder_start_token_id=c.decoder_start_token_id, initializer_factor=c.init_factor)


def config_from_hf(h) -> dict:
    """Keyword arguments of our ``T5Config`` for a ``transformers.T5Config`` ``h``; refuses what does not convert."""
    if not getattr(h, "is_gated_act", False):
        raise ConfigError(f"feed_forward_proj={h.feed_forward_proj!r}: only gated T5 (v1.1, Flan-T5) converts; "
                          "original T5 uses a ReLU feed-forward")
    # transformers 5 always reports tie_word_embeddings=True and keeps the v1.1 meaning in scale_decoder_outputs
    if getattr(h, "scale_decoder_outputs", getattr(h, "tie_word_embeddings", False)):
        raise ConfigError("this T5 scales decoder outputs by d_model^-0.5 (original T5, tied head); only T5 "
                          "v1.1-style untied LM heads convert")
    act = _HF_TO_ACT.get(h.dense_act_fn)
    if act is None:
        raise ConfigError(f"dense_act_fn={h.dense_act_fn!r} is not supported; choose one of {sorted(_HF_TO_ACT)}")
    return dict(vocab_size=h.vocab_size, d_model=h.d_model, d_kv=h.d_kv, d_ff=h.d_ff, n_layers=h.num_layers,
                n_decoder_layers=h.num_decoder_layers, n_heads=h.num_heads,
                rel_buckets=h.relative_attention_num_buckets, rel_max_distance=h.relative_attention_max_distance,
                dropout=h.dropout_rate, norm_eps=h.layer_norm_epsilon, ff_act=act, pad_token_id=h.pad_token_id,
                decoder_start_token_id=h.decoder_start_token_id, init_factor=h.initializer_factor)


def to_hf(model):
    """``transformers.T5ForConditionalGeneration`` holding the weights of our ``T5`` ``model``, in eval mode and its
    dtype."""
    from transformers import T5ForConditionalGeneration

    hf = T5ForConditionalGeneration(config_to_hf(model.config))
    # transformers 5 ties lm_head to shared at construction; v1.1 keeps them apart (as its checkpoints load).
    hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach().clone())
    sd = {hf_name(k): v for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith("embed_tokens.weight")]  # tied to shared
    if missing or unexpected:
        raise RuntimeError(f"T5 -> Hugging Face conversion mismatch: missing={missing} unexpected={unexpected}")
    return hf.to(model.shared.weight.dtype).eval()


def state_dict_from_hf(hf_state: dict, names) -> dict:
    """Our parameters ``names`` (an iterable of our names) taken from a Hugging Face T5 state dict."""
    sd = {}
    for name in names:
        key = hf_name(name)
        if key not in hf_state:
            raise RuntimeError(f"Hugging Face -> T5 conversion: {key!r} missing from the checkpoint")
        sd[name] = hf_state[key]
    return sd
