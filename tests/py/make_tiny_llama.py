"""A tiny Llama decoder built by fixtures/make_smollm2.py's graph builder (plain ops: RMSNorm
from primitives, rotary embedding from position_ids, grouped-query attention by repeated KV
heads, causal plus padding mask), with random weights (seed 0): 4 blocks, hidden 32, 4 query
and 2 KV heads, FFN 64, vocabulary 96.

    python make_tiny_llama.py OUT.onnx [--fused] [--presents | --decode]

With --fused, the same network with onnxruntime's fused LLM ops (SimplifiedLayerNormalization,
SkipSimplifiedLayerNormalization, RotaryEmbedding, GroupQueryAttention), as make_smollm2.py
writes SmolLM2's fused form.

Inputs: input_ids, attention_mask, position_ids [batch, sequence_length]. Output: logits.
--presents: the prompt graph also outputs each block's keys and values (present.{i}.key/value,
see with_presents.py); --decode: the decode graph (past_key_values.{i}.key/value inputs,
attention_mask [batch, total_sequence_length], present outputs), as make_smollm2.py's decode.onnx.
"""
import os
import sys

import numpy as np
import onnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures"))
from make_smollm2 import build_graph  # noqa: E402
from with_presents import add_presents  # noqa: E402

CFG = {
    "num_hidden_layers": 4, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "intermediate_size": 64, "vocab_size": 96, "rms_norm_eps": 1e-5, "rope_dimension_count": 8, "rope_theta": 10000.0,
    "max_position_embeddings": 256,
}


def main():
    rng = np.random.default_rng(0)
    H, F, V, hd = CFG["hidden_size"], CFG["intermediate_size"], CFG["vocab_size"], CFG["head_dim"]
    nh, nkv = CFG["num_attention_heads"], CFG["num_key_value_heads"]
    w = lambda *shape, s=0.3: (rng.standard_normal(shape) * s).astype(np.float32)  # noqa: E731
    weights = {"token_embd.weight": w(V, H, s=1.0), "output_norm.weight": 1 + w(H, s=0.1)}
    for i in range(CFG["num_hidden_layers"]):
        b = f"blk.{i}"
        weights.update({
            f"{b}.attn_norm.weight": 1 + w(H, s=0.1), f"{b}.ffn_norm.weight": 1 + w(H, s=0.1),
            f"{b}.attn_q.weight": w(nh * hd, H), f"{b}.attn_k.weight": w(nkv * hd, H), f"{b}.attn_v.weight": w(nkv * hd, H),
            f"{b}.attn_output.weight": w(H, nh * hd), f"{b}.ffn_gate.weight": w(F, H), f"{b}.ffn_up.weight": w(F, H),
            f"{b}.ffn_down.weight": w(H, F),
        })
    fused = "--fused" in sys.argv[2:]
    model = build_graph(CFG, weights, with_past="--decode" in sys.argv[2:], fused=fused)
    if "--presents" in sys.argv[2:]:
        model = add_presents(model)
    if not fused:  # the checker knows no onnxruntime contrib ops
        onnx.checker.check_model(model)
    onnx.save(model, sys.argv[1])


if __name__ == "__main__":
    main()
