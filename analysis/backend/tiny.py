"""Tiny random-weight models with a tokenizer built locally: for tests and GPU benchmarks (no hub)."""
from __future__ import annotations

from pathlib import Path

CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;!?+-*/=()[]{}$#%\\\n_'\"<>|")
WORDS = ["Wait", "Alternatively", "Hmm", "answer", "the", "is", "so", "final", "boxed", "Question", "Think",
         "step", "by", "then", "give"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "<eos>": 1, "<|user|>": 2, "<|assistant|>": 3, "<|end|>": 4, "<|system|>": 5, "<unk>": 6}
    for w in WORDS + CHARS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # split into the known words, else single characters
    import re
    pattern = "|".join(re.escape(w) for w in sorted(WORDS, key=len, reverse=True)) + r"|[\s\S]"
    from tokenizers import Regex
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                  additional_special_tokens=["<|user|>", "<|assistant|>", "<|end|>", "<|system|>"])
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_model(arch: str = "llama", seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4,
                vocab_size: int | None = None, kv_heads: int | None = None, **overrides):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(arch, vocab_size=vocab_size or len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                               max_position_embeddings=4096, pad_token_id=0, eos_token_id=1, bos_token_id=None,
                               tie_word_embeddings=False, **overrides)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    return model, tok


def save_tiny(path: str | Path, arch: str = "llama", seed: int = 0) -> Path:
    """Write a tiny random model + tokenizer to a directory loadable by name (a local path)."""
    model, tok = build_model(arch, seed)
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
