"""Helpers for the trainer tests: a tiny tokenizer and a tiny random Llama, built offline, and datasets.

No model hub here: the tokenizer is a byte-level BPE trained on the test text, wrapped in
PreTrainedTokenizerFast with a chatml template, saved and reloaded with AutoTokenizer; the
model is a 2-layer, 64-wide Llama with that vocabulary, random weights, saved beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Memorisable Q/A pairs: the loss on them must go down within a few dozen steps.
QA = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("What colour is the sky?", "The sky is blue."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("What do bees make?", "Bees make honey."),
    ("What is two plus two?", "Two plus two is four."),
    ("Which planet is red?", "Mars is the red planet."),
    ("What do cows drink?", "Cows drink water."),
    ("Where do fish live?", "Fish live in water."),
]
SYSTEM = "You are a helpful assistant."


def alpaca_rows() -> list[dict[str, Any]]:
    return [{"instruction": q, "input": "", "output": a} for q, a in QA]


def sharegpt_rows() -> list[dict[str, Any]]:
    return [
        {
            "conversations": [
                {"from": "system", "value": SYSTEM},
                {"from": "human", "value": q},
                {"from": "gpt", "value": a},
            ]
        }
        for q, a in QA
    ]


def messages_rows() -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in QA
    ]


def text_rows() -> list[dict[str, Any]]:
    return [{"text": f"{q} {a}"} for q, a in QA]


ROWS = {"alpaca": alpaca_rows, "sharegpt": sharegpt_rows, "messages": messages_rows, "text": text_rows}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(out: Path) -> Any:
    """A byte-level BPE trained on the test corpus, with chatml specials and template; reloaded from disk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    corpus = [f"{SYSTEM} {q} {a} user assistant system" for q, a in QA]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<pad>", "<s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>"
    )
    fast.chat_template = CHATML
    fast.save_pretrained(str(out))
    return AutoTokenizer.from_pretrained(str(out))


def build_model(out: Path, vocab_size: int, tokenizer: Any) -> None:
    """A random 2-layer Llama (hidden 64) saved as safetensors next to the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out))


def job_spec(model_dir: Path, data: Path, **hp: Any) -> dict[str, Any]:
    """A small FineTuneJob spec for CPU tests (LoRA, a few steps, local storage)."""
    hyper = {
        "epochs": 1,
        "learningRate": 5e-3,
        "batchSize": 4,
        "gradientAccumulation": 1,
        "maxSeqLength": 128,
        "packing": True,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": "all-linear"},
        "optimizer": "adamw_torch",
        "seed": 0,
        "warmupRatio": 0.0,
        "lrScheduler": "constant",
        "maxSteps": 4,
        "gradientCheckpointing": False,
    }
    hyper.update(hp)
    return {
        "model": {"source": str(model_dir)},
        "method": "lora",
        "dataset": {"source": str(data), "format": "auto", "trainOn": "responses"},
        "hyperparameters": hyper,
        "storage": {"bucket": "kubeft"},
        "checkpoints": {"everySteps": 2, "keep": 2},
        "export": {"formats": ["adapter"]},
    }
