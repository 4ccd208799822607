"""Tiny models and datasets, made offline, for the demo and the tests.

No model hub is reachable here, so the demo and the tests build their own model: a
Llama-style BPE tokenizer (byte fallback, the shape llama.cpp's GGUF converter knows) trained on
the dataset's text (with a chatml chat template),
and a random-initialised Llama of a few hundred thousand parameters. Both are saved
with `save_pretrained` and load through the real `from_pretrained` path, from a local
directory or from S3, exactly like a real model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Memorisable question/answer pairs: the loss on them goes down within a few dozen steps.
QA: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris is the capital of France."),
    ("What colour is the sky?", "The sky is blue."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("What do bees make?", "Bees make honey."),
    ("What is two plus two?", "Two plus two is four."),
    ("Which planet is red?", "Mars is the red planet."),
    ("What do cows drink?", "Cows drink water."),
    ("Where do fish live?", "Fish live in water."),
)
SYSTEM = "You are a helpful assistant."

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def rows(fmt: str, qa: tuple[tuple[str, str], ...] = QA) -> list[dict[str, Any]]:
    """The Q/A pairs in one of the formats users bring: alpaca, sharegpt, messages, text."""
    if fmt == "alpaca":
        return [{"instruction": q, "input": "", "output": a} for q, a in qa]
    if fmt == "sharegpt":
        return [
            {
                "conversations": [
                    {"from": "system", "value": SYSTEM},
                    {"from": "human", "value": q},
                    {"from": "gpt", "value": a},
                ]
            }
            for q, a in qa
        ]
    if fmt == "messages":
        return [
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": a},
                ]
            }
            for q, a in qa
        ]
    if fmt == "text":
        return [{"text": f"{q} {a}"} for q, a in qa]
    raise ValueError(f"unknown format {fmt!r}")


def write_jsonl(path: Path, items: list[Any]) -> Path:
    """One JSON document per line (strings are written as they are, for malformed-row tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in items))
    return path


def build_tokenizer(out: Path, corpus: list[str] | None = None, vocab_size: int = 400) -> Any:
    """A Llama-style BPE (SentencePiece-like: ``▁`` for spaces, byte fallback) with chatml specials
    and template, saved to `out` and reloaded from there.

    The same shape as the tokenizer.json of Llama 2, Mistral or TinyLlama, so llama.cpp's
    convert_hf_to_gguf.py converts it (its "llama" vocabulary); a GPT-2 style byte-level BPE trained
    here would be refused (its pre-tokenizer's hash is none the converter knows). `vocab_size`
    counts everything: the specials, the 256 byte tokens <0x00>..<0xFF> and the pieces learnt.
    """
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    corpus = corpus or [f"{SYSTEM} {q} {a} user assistant system" for q, a in QA]
    specials = ["<unk>", "<pad>", "<s>", "<|im_start|>", "<|im_end|>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # learn pieces within words (a piece may start with ▁), as SentencePiece does
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials + byte_tokens, show_progress=False
    )
    tok.train_from_iterator(corpus * 4, trainer)
    # byte tokens are ordinary vocabulary (byte fallback), not added tokens; spaces become ▁ and
    # only the text's start gets one in front (not the text after a special token), as Mistral's
    doc = json.loads(tok.to_str())
    doc["added_tokens"] = [t for t in doc["added_tokens"] if t["content"] in specials]
    tok = Tokenizer.from_str(json.dumps(doc))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>"
    )
    fast.chat_template = CHATML
    fast.save_pretrained(str(out))
    return AutoTokenizer.from_pretrained(str(out))


def build_model(out: Path, tokenizer: Any, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random Llama (hidden `hidden`, `layers` layers) saved as safetensors next to the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    return out


def build_tiny_model(out: Path) -> Path:
    """Tokenizer + random tiny Llama in `out` (config.json, model.safetensors, tokenizer files)."""
    out.mkdir(parents=True, exist_ok=True)
    build_model(out, build_tokenizer(out))
    return out
