"""The bench's workload: model shapes, random-initialised models, a word-level tokenizer, and samples.

Every trainer in a run trains the same model directory (random weights with a real shape,
created on the GPU and saved with ``save_pretrained``, loaded by each trainer through
``from_pretrained``) on the same samples.

Samples follow an instruction dataset's lengths (log-normal, median 400 tokens, capped at the
maximum length) and a learnable task, so that loss comparisons mean something: tokens come
from a fixed sub-vocabulary and each next token is a fixed successor of the current one with
probability ``FOLLOW``, else a uniform draw from the sub-vocabulary. A model that learns the
rule reaches about 2 nats/token; a random one starts near ln(vocab) ≈ 11.8.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from kubeft.estimate import KNOWN_SHAPES

# The bench's shape names and the estimator's (kubeft.estimate.KNOWN_SHAPES: one table of real shapes)
ESTIMATOR_NAMES: dict[str, str] = {
    "llama-1b": "llama-3.2-1b",
    "llama-8b": "llama-3.1-8b",
    "qwen2.5-1.5b": "qwen2.5-1.5b",
    "qwen2.5-7b": "qwen2.5-7b",
    "qwen2.5-0.5b": "qwen2.5-0.5b",
    "mistral-7b": "mistral-7b-v0.3",
}
ROPE_THETA = {
    "llama-1b": 500000.0, "llama-8b": 500000.0, "qwen2.5-1.5b": 1000000.0, "qwen2.5-7b": 1000000.0,
    "qwen2.5-0.5b": 1000000.0, "mistral-7b": 1000000.0,
}  # fmt: skip
# config.json fields of each shape: the estimator's, plus the RoPE base the model needs
SHAPES: dict[str, dict[str, Any]] = {
    **{name: {**KNOWN_SHAPES[est], "rope_theta": ROPE_THETA[name]} for name, est in ESTIMATOR_NAMES.items()},
    # for smoke tests on CPU
    "tiny": {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 4096,
        "tie_word_embeddings": False, "rope_theta": 10000.0,
    },
    "tiny-qwen2": {
        "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 4096,
        "tie_word_embeddings": True, "rope_theta": 10000.0,
    },
}  # fmt: skip

# Token ids 0..2 are the tokenizer's specials.
UNK, PAD, EOS = 0, 1, 2
SUBVOCAB = 2048
FOLLOW = 0.8
MEDIAN_LEN = 400
SIGMA = 0.8
MIN_LEN = 32


def make_model_dir(shape: str, root: Path) -> Path:
    """Creates (once) a random-initialised bf16 model of `shape` on the GPU, saved with its tokenizer."""
    out = root / shape
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(SHAPES[shape])
    model_type = fields.pop("model_type")
    cfg = AutoConfig.for_model(
        model_type,
        max_position_embeddings=8192,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=None,
        **fields,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(str(out))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    save_tokenizer(int(fields["vocab_size"]), out)
    return out


def save_tokenizer(vocab: int, out: Path) -> None:
    """A word-level tokenizer: the text ``t5 t17 t99`` is the ids [5, 17, 99]; eos is ``</s>`` (id 2).

    The specials have names that no word contains: special tokens are matched in the raw text.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": UNK, "<pad>": PAD, "</s>": EOS} | {f"t{i}": i for i in range(3, vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )
    fast.save_pretrained(str(out))


def keep_word_level_tokenizer() -> None:
    """Makes ``AutoTokenizer`` load the bench's word-level tokenizer for every model type.

    transformers 5 replaces the saved tokenizer class by the model type's own for some types
    (``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``: qwen2, phi3, ...). For a Qwen2 shape it
    rebuilt a byte-level BPE from the word-level vocabulary, which drops every word: each
    sample became one token and the grid measured no activations. The bench's models are not
    hub checkpoints, so the saved class is right; :func:`check_tokenizer` proves it per run.
    """
    try:
        from transformers.models.auto import tokenization_auto
    except ImportError:  # pragma: no cover - transformers missing
        return
    forced = getattr(tokenization_auto, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", None)
    if isinstance(forced, set):
        forced.difference_update({str(shape["model_type"]) for shape in SHAPES.values()})


def check_tokenizer(model_dir: Path) -> None:
    """Raises RuntimeError unless the directory's tokenizer maps ``t5 t17 t99`` to [5, 17, 99]."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(model_dir))("t5 t17 t99", add_special_tokens=False).input_ids
    if list(ids) != [5, 17, 99]:
        raise RuntimeError(
            f"the bench's tokenizer in {model_dir} encodes 't5 t17 t99' as {list(ids)}, not [5, 17, 99]: "
            "samples would not have their intended length"
        )


def _lengths(rng: random.Random, n: int, max_len: int) -> list[int]:
    # sample length without eos; with eos appended it is at most max_len
    return [
        int(min(max_len - 1, max(MIN_LEN, rng.lognormvariate(math.log(MEDIAN_LEN), SIGMA)))) for _ in range(n)
    ]


def samples(
    n: int, max_len: int, vocab: int, seed: int = 0, subvocab: int = SUBVOCAB, full_rows: bool = False
) -> list[list[int]]:
    """`n` token-id sequences of the learnable task, each ending with eos.

    A smaller `subvocab` makes the task quicker to learn (loss runs). The floor is the task's
    entropy, ≈ 0.5 + 0.2·ln(subvocab) nats/token (2.0 for 2,048 tokens, 1.6 for 256).
    `full_rows`: every sample is exactly `max_len` tokens, so packed rows are full (the memory
    grid measures the estimator's worst case, every row at the maximum length).
    """
    task = random.Random(1234)  # the task is the same for every seed
    sub = task.sample(range(3, vocab), subvocab)
    succ = {a: sub[task.randrange(subvocab)] for a in sub}
    rng = random.Random(seed)
    out = []
    lengths = [max_len - 1] * n if full_rows else _lengths(rng, n, max_len)
    for length in lengths:
        cur = rng.choice(sub)
        seq = [cur]
        for _ in range(length - 1):
            cur = succ[cur] if rng.random() < FOLLOW else rng.choice(sub)
            seq.append(cur)
        out.append([*seq, EOS])
    return out


def write_text_jsonl(seqs: list[list[int]], path: Path) -> Path:
    """The samples as a `text` dataset for kubeft's trainer (eos left for the trainer to append)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for seq in seqs:
            assert seq[-1] == EOS
            # trailing space: the trainer appends eos ("</s>") to the text, which must stay a separate word
            f.write(json.dumps({"text": " ".join(f"t{i}" for i in seq[:-1]) + " "}) + "\n")
    return path
