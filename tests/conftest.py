"Shared fixtures: the embedded model is loaded once per test session (from the cache in SEQLAB_HOME)."
import os
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol():
    from seqlab.zoo import load
    return load("smollm2-135m")


def copier(alphabet: str, n_layers: int = 2, n_heads: int = 3, seed: int = 0):
    "A tiny lab Transformer whose L0H0 attends uniformly to the prefix and writes each token's identity where the unembedding reads; every other head is random with a small output."
    import torch
    from seqlab.archs import CharTokenizer, Transformer, TransformerConfig
    from seqlab.zoo import as_lab_model
    tok = CharTokenizer(alphabet + "#", pad="#")
    V = tok.vocab_size; dh, d = V + V % 2, 2 * V + 4                 # an even d_head for RoPE; d_model != d_vocab
    cfg = TransformerConfig(d_vocab=V, d_model=d, n_layers=n_layers, n_heads=n_heads, d_head=dh, d_mlp=0, norm="rmsnorm")
    torch.manual_seed(seed)
    m = Transformer(cfg)
    with torch.no_grad():
        m.embed.weight.zero_(); m.embed.weight[:, :V] = torch.eye(V)
        for b in m.blocks: b.attn.out.weight.mul_(0.05)
        qkv = m.blocks[0].attn.qkv.weight.view(3, n_heads, dh, d)
        qkv[:, 0] = 0; qkv[2, 0, :V, :V] = torch.eye(V)               # uniform attention, value = the token
        W_O = m.blocks[0].attn.out.weight.view(d, n_heads, dh)
        W_O[:, 0] = 0; W_O[V:2 * V, 0, :V] = torch.eye(V)
        m.unembed.weight.zero_(); m.unembed.weight[:, V:2 * V] = 4 * torch.eye(V)
    return as_lab_model(m, tok, "copier")
