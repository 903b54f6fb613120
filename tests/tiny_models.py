"""Tiny random decoder-only models and a locally trained tokenizer, so tests need no hub and run in seconds."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Question: what is 12 plus 30? Answer: 42.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\nSolve the problem.\n\n### Response:\nThe answer is 7.",
    "Sparse language models keep half of their weights at zero and stay accurate after adapter training.",
    "Please choose the correct answer: option1, option2, answer1, answer2, answer3, answer4, answer5, true, false.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) . , ; : ? ! ' \" # @ A B C D E",
]
#: calibration documents for W8A8 exports of the tiny models: every rotation of the corpus, three times
CALIBRATION = [" ".join(CORPUS[i:] + CORPUS[:i]) for i in range(len(CORPUS))] * 3

# hidden 64, 2 blocks, 4 heads: every architecture's forward takes milliseconds on a CPU.
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(intermediate_size=96, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(intermediate_size=96, num_key_value_heads=2)),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(intermediate_size=96, num_key_value_heads=2, sliding_window=None),
    ),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(intermediate_size=96, num_key_value_heads=4, pad_token_id=0)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(intermediate_size=96)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(intermediate_size=96, num_key_value_heads=2, head_dim=16)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(ffn_dim=96, word_embed_proj_dim=64)),
}


@functools.lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(CORPUS * 4, trainer)
    return tk.to_str()


def make_tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
    )
    return tok


def make_model(arch: str = "llama", seed: int = 0, **overrides):
    import transformers

    cfg_name, model_name, extra = ARCHS[arch]
    tok = make_tokenizer()
    kw = dict(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    kw.update(extra)
    kw.update(overrides)
    if arch == "opt":
        kw["ffn_dim"] = kw.pop("intermediate_size", kw.get("ffn_dim"))
    config = getattr(transformers, cfg_name)(**kw)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    return model, tok


def save_tiny(path: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    model, tok = make_model(arch, seed, **overrides)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
