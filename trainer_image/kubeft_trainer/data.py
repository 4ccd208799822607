"""Datasets: read rows in the formats users bring, convert to one conversation shape, tokenize with labels.

Formats (one JSON object per line, or a JSON list):

* ``alpaca``: instruction, input?, output, system?, history? ([[user, assistant], ...])
* ``sharegpt``: conversations [{from: human|gpt|system, value}] (or role/content), system?
* ``messages``: OpenAI-style messages [{role: system|user|assistant, content}]
* ``text``: text (plain language modelling; every token is trained)

Each row becomes a `Sample` early (LLaMA-Factory's habit): a list of messages, or a text.
Rows that cannot be converted are counted and reported with their line numbers instead of
crashing the run; no usable rows at all is an InvalidInputError.

Labels: the chat template renders the conversation; with ``trainOn: responses`` only the
characters of assistant turns (content and end-of-turn marker) keep their token ids as
labels, everything else is -100; ``all`` trains on every token. Packing (bfd, padding-free)
is left to TRL's SFTTrainer, which resets position_ids per packed sample so that attention
never crosses sample boundaries.

Lengths: samples are cut to ``maxSeqLength`` here (keeping the start, as TRL would), so that
what the `LengthReport` says is what trains. A sample whose answer lies wholly past the limit
would train nothing (a packed row of such samples makes a step with loss 0): it is dropped and
counted like a malformed row. No sample left is an InvalidInputError naming the length that
keeps 95% of the samples whole.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeft_trainer.errors import InvalidInputError
from kubeft_trainer.storage import visible_files

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
DATA_SUFFIXES = (".jsonl", ".json", ".ndjson")
MALFORMED_LINES_SHOWN = 5
# More than this share of samples longer than maxSeqLength makes the length Event a Warning.
TRUNCATED_WARNING_SHARE = 0.05
# The share of samples the suggested maxSeqLength keeps whole.
KEEP_WHOLE_SHARE = 0.95

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE}

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}
MESSAGE_ROLES = frozenset({"system", "user", "assistant", "tool"})


class MalformedRow(ValueError):
    """A row that cannot be converted; the message says why."""


@dataclass
class Sample:
    """The internal shape of one training example: a conversation, or a plain text."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None
    line: int = 0  # where the row is in its dataset (1-based; JSON lists count items), for reports


@dataclass
class DataReport:
    """What reading a dataset found: the format, how many rows were used and which were skipped."""

    source: str
    format: str
    detected: bool
    rows: int = 0
    usable: int = 0
    malformed: int = 0
    malformed_lines: list[int] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        """One line for logs and the status message."""
        how = "detected" if self.detected else "configured"
        text = (
            f"dataset {self.source}: format {self.format} ({how}), {self.usable} of {self.rows} rows usable"
        )
        if self.malformed:
            lines = ", ".join(str(n) for n in self.malformed_lines)
            more = ", ..." if self.malformed > len(self.malformed_lines) else ""
            top = "; ".join(f"{r} ({n})" for r, n in self.reasons.most_common(3))
            text += f"; skipped {self.malformed} malformed rows (lines {lines}{more}): {top}"
        return text


def percentile(sorted_values: Sequence[int], share: float) -> int:
    """Nearest-rank percentile: the smallest value that at least `share` of the values do not exceed."""
    if not sorted_values:
        return 0
    return sorted_values[max(0, math.ceil(share * len(sorted_values)) - 1)]


@dataclass
class LengthReport:
    """What ``maxSeqLength`` does to one tokenized dataset (train or eval).

    `lengths` are the token lengths before the cut, of every sample that has a trainable
    token at all. A token is trainable when its label is set and it is not the sample's first
    token: the loss predicts token i from the tokens before it, so the first is never a target.
    """

    source: str
    max_seq_length: int | None
    lengths: list[int] = field(default_factory=list, repr=False)
    truncated: int = 0  # samples longer than max_seq_length
    tokens_cut: int = 0
    answer_cut: int = 0  # dropped: every trainable token was past the limit
    answer_cut_lines: list[int] = field(default_factory=list)
    answer_partly_cut: int = 0

    @property
    def samples(self) -> int:
        return len(self.lengths)

    @property
    def kept(self) -> int:
        return self.samples - self.answer_cut

    def percentile(self, share: float) -> int:
        return percentile(sorted(self.lengths), share)

    @property
    def suggested_max_seq_length(self) -> int:
        """The shortest maxSeqLength that keeps KEEP_WHOLE_SHARE of the samples whole."""
        return self.percentile(KEEP_WHOLE_SHARE)

    @property
    def truncated_share(self) -> float:
        return self.truncated / self.samples if self.samples else 0.0

    @property
    def warning(self) -> bool:
        """True when more than TRUNCATED_WARNING_SHARE of the samples are cut."""
        return self.truncated_share > TRUNCATED_WARNING_SHARE

    def lengths_text(self) -> str:
        ordered = sorted(self.lengths)
        return (
            f"lengths p50 {percentile(ordered, 0.5)}, p95 {percentile(ordered, 0.95)}, "
            f"max {ordered[-1] if ordered else 0} tokens"
        )

    def summary(self) -> str:
        """One line for logs, the status message and the Event."""
        text = f"dataset {self.source}: {self.lengths_text()}"
        limit = self.max_seq_length
        if limit is None:
            return text
        if not self.truncated:
            return f"{text}; none of {self.samples} samples longer than maxSeqLength {limit}"
        text += (
            f"; {self.truncated} of {self.samples} samples longer than maxSeqLength {limit} "
            f"({self.tokens_cut} tokens cut)"
        )
        if self.answer_cut:
            lines = ", ".join(str(n) for n in self.answer_cut_lines)
            more = ", ..." if self.answer_cut > len(self.answer_cut_lines) else ""
            text += f": dropped {self.answer_cut} whose answer was cut away (lines {lines}{more})"
        if self.answer_partly_cut:
            text += f"{',' if self.answer_cut else ':'} {self.answer_partly_cut} with the answer partly cut"
        share = round(100 * KEEP_WHOLE_SHARE)
        return text + f"; maxSeqLength {self.suggested_max_seq_length} keeps {share}% of them whole"

    def metrics(self, prefix: str) -> dict[str, int]:
        """Numbers for the run summary (status.metrics), keys prefixed with `prefix` (train, eval)."""
        ordered = sorted(self.lengths)
        return {
            f"{prefix}Samples": self.kept,
            f"{prefix}SamplesTruncated": self.truncated,
            f"{prefix}TokensCut": self.tokens_cut,
            f"{prefix}SamplesAnswerCut": self.answer_cut,
            f"{prefix}SamplesAnswerPartlyCut": self.answer_partly_cut,
            f"{prefix}LengthP50": percentile(ordered, 0.5),
            f"{prefix}LengthP95": percentile(ordered, 0.95),
            f"{prefix}LengthMax": ordered[-1] if ordered else 0,
        }


# --- reading -----------------------------------------------------------------


def data_files(path: Path) -> list[Path]:
    """The data files of a file or a directory (every .jsonl/.json, sorted)."""
    if path.is_file():
        return [path]
    # hidden folders are not data: a hub download's .cache/huggingface, .ipynb_checkpoints, ...
    files = [p for p in visible_files(path) if p.suffix in DATA_SUFFIXES]
    if not files:
        raise InvalidInputError(f"dataset {path}: no {', '.join(DATA_SUFFIXES)} files found")
    return files


def read_rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed JSON or a MalformedRow) per non-empty line; JSON list files count items."""
    rows: list[tuple[int, Any]] = []
    offset = 0
    for file in data_files(path):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"dataset {file}: cannot read: {exc}") from exc
        stripped = text.lstrip()
        if file.suffix == ".json" and stripped.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"dataset {file}: not valid JSON: {exc}") from exc
            rows.extend((offset + i + 1, item) for i, item in enumerate(items))
            offset += len(items)
            continue
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append((offset + i + 1, json.loads(line)))
            except json.JSONDecodeError as exc:
                rows.append((offset + i + 1, MalformedRow(f"not valid JSON ({exc.msg})")))
        offset += len(lines)
    return rows


def detect_format(rows: Sequence[tuple[int, Any]], sample_size: int = 200) -> str:
    """The format most of the first rows look like; InvalidInputError when none fits."""
    votes: Counter[str] = Counter()
    for _, row in rows[:sample_size]:
        if not isinstance(row, dict):
            continue
        if "messages" in row:
            votes["messages"] += 1
        elif "conversations" in row:
            votes["sharegpt"] += 1
        elif "instruction" in row or "output" in row:
            votes["alpaca"] += 1
        elif "text" in row:
            votes["text"] += 1
    if not votes:
        raise InvalidInputError(
            "dataset format: cannot detect it from the rows (expected keys messages, conversations, "
            "instruction/output, or text); set spec.dataset.format"
        )
    fmt, _ = votes.most_common(1)[0]
    return fmt


# --- conversion to the internal shape -----------------------------------------


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise MalformedRow(f"{what} is not a string")
    return value


def _check_conversation(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise MalformedRow("no assistant response")
    return messages


def convert_alpaca(row: dict[str, Any]) -> Sample:
    instruction = _text(row.get("instruction", ""), "instruction")
    extra = row.get("input") or ""
    prompt = "\n\n".join(p for p in (instruction, _text(extra, "input")) if p.strip())
    if not prompt.strip():
        raise MalformedRow("empty instruction")
    if "output" not in row:
        raise MalformedRow("missing output")
    output = _text(row["output"], "output")
    messages: list[dict[str, str]] = []
    if row.get("system"):
        messages.append({"role": "system", "content": _text(row["system"], "system")})
    for turn in row.get("history") or []:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise MalformedRow("history entries must be [user, assistant] pairs")
        messages.append({"role": "user", "content": _text(turn[0], "history user turn")})
        messages.append({"role": "assistant", "content": _text(turn[1], "history assistant turn")})
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": output})
    return Sample(messages=_check_conversation(messages))


def convert_sharegpt(row: dict[str, Any]) -> Sample:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise MalformedRow("conversations is not a non-empty list")
    messages: list[dict[str, str]] = []
    if row.get("system"):
        messages.append({"role": "system", "content": _text(row["system"], "system")})
    for turn in turns:
        if not isinstance(turn, dict):
            raise MalformedRow("a conversation turn is not an object")
        speaker = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        role = SHAREGPT_ROLES.get(str(speaker).lower()) if speaker is not None else None
        if role is None:
            raise MalformedRow(f"unknown speaker {speaker!r}")
        messages.append({"role": role, "content": _text(content, "turn value")})
    return Sample(messages=_check_conversation(messages))


def convert_messages(row: dict[str, Any]) -> Sample:
    raw = row.get("messages")
    if not isinstance(raw, list) or not raw:
        raise MalformedRow("messages is not a non-empty list")
    messages = []
    for m in raw:
        if not isinstance(m, dict):
            raise MalformedRow("a message is not an object")
        role = m.get("role")
        if role not in MESSAGE_ROLES:
            raise MalformedRow(f"unknown role {role!r}")
        messages.append({"role": str(role), "content": _text(m.get("content"), "message content")})
    return Sample(messages=_check_conversation(messages))


def convert_text(row: dict[str, Any]) -> Sample:
    text = _text(row.get("text"), "text")
    if not text.strip():
        raise MalformedRow("empty text")
    return Sample(text=text)


CONVERTERS = {
    "alpaca": convert_alpaca,
    "sharegpt": convert_sharegpt,
    "messages": convert_messages,
    "text": convert_text,
}


def convert_rows(
    rows: Sequence[tuple[int, Any]], fmt: str, source: str, detected: bool
) -> tuple[list[Sample], DataReport]:
    """Converts every row; malformed ones are counted in the report, not raised."""
    report = DataReport(source=source, format=fmt, detected=detected, rows=len(rows))
    convert = CONVERTERS[fmt]
    samples: list[Sample] = []
    for line, row in rows:
        try:
            if isinstance(row, MalformedRow):
                raise row
            if not isinstance(row, dict):
                raise MalformedRow("not a JSON object")
            sample = convert(row)
            sample.line = line
            samples.append(sample)
        except MalformedRow as exc:
            report.malformed += 1
            report.reasons[str(exc)] += 1
            if len(report.malformed_lines) < MALFORMED_LINES_SHOWN:
                report.malformed_lines.append(line)
    report.usable = len(samples)
    return samples, report


def load_samples(path: Path, fmt: str, source: str) -> tuple[list[Sample], DataReport]:
    """Reads and converts a dataset; InvalidInputError when it has no usable row."""
    rows = read_rows(path)
    if not rows:
        raise InvalidInputError(f"dataset {source}: no rows")
    detected = fmt == "auto"
    if detected:
        fmt = detect_format(rows)
    samples, report = convert_rows(rows, fmt, source, detected)
    if report.malformed:
        log.warning("%s", report.summary())
    else:
        log.info("%s", report.summary())
    if not samples:
        raise InvalidInputError(f"no usable rows: {report.summary()}")
    return samples, report


# --- templates and tokenization ---------------------------------------------------


def resolve_chat_template(tokenizer: Any, named: str | None) -> str:
    """The template to render conversations with: the named one, else the tokenizer's, else chatml."""
    if named:
        template = NAMED_TEMPLATES[named]
    elif getattr(tokenizer, "chat_template", None):
        return str(tokenizer.chat_template)
    else:
        log.info("the tokenizer has no chat template; using chatml")
        named, template = "chatml", CHATML_TEMPLATE
    markers = {"chatml": ("<|im_start|>", "<|im_end|>"), "llama3": ("<|start_header_id|>", "<|eot_id|>")}[
        named
    ]
    vocab = tokenizer.get_vocab()
    missing = [m for m in markers if m not in vocab]
    if missing:
        log.warning(
            "chat template %s: %s not in the tokenizer's vocabulary; they are trained as plain text",
            named,
            missing,
        )
    return template


def _render(
    tokenizer: Any, template: str, messages: list[dict[str, str]], add_generation_prompt: bool
) -> str:
    return str(
        tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    )


def assistant_spans(
    tokenizer: Any, template: str, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns.

    A turn's span runs from the end of the prompt rendered with a generation prompt to the
    end of the conversation rendered through that turn, so it includes the end-of-turn
    marker (the model learns to stop). Templates that re-render earlier turns differently
    fall back to locating the turn's content.
    """
    full = _render(tokenizer, template, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, template, messages[:i], add_generation_prompt=True) if i else ""
        through = _render(tokenizer, template, messages[: i + 1], add_generation_prompt=False)
        if full.startswith(through) and through.startswith(before) and len(before) >= cursor:
            start, end = len(before), len(through)
        else:
            start = full.find(message["content"], cursor)
            if start < 0:
                continue
            end = start + len(message["content"])
        spans.append((start, end))
        cursor = end
    return full, spans


def tokenize_sample(tokenizer: Any, template: str, sample: Sample, train_on: str) -> dict[str, list[int]]:
    """input_ids and labels for one sample (labels -100 where no loss is taken)."""
    if sample.text is not None:
        text = sample.text
        eos = tokenizer.eos_token
        if eos and not text.endswith(eos):
            text += eos
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        return {"input_ids": ids, "labels": list(ids)}
    assert sample.messages is not None
    full, spans = assistant_spans(tokenizer, template, sample.messages)
    if tokenizer.is_fast:
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = enc["offset_mapping"]
    else:
        ids, offsets = _tokenize_by_segments(tokenizer, full, spans)
    if train_on == "all":
        return {"input_ids": ids, "labels": list(ids)}
    labels = [IGNORE_INDEX] * len(ids)
    for j, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        if any(s < end and e > start for start, end in spans):
            labels[j] = ids[j]
    return {"input_ids": ids, "labels": labels}


def _tokenize_by_segments(
    tokenizer: Any, full: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[tuple[int, int]]]:
    # Slow tokenizers have no offsets: tokenize the text between span boundaries separately and
    # give each token its segment's span.
    bounds = sorted({0, len(full), *[b for span in spans for b in span]})
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(bounds):
        seg = tokenizer(full[a:b], add_special_tokens=False)["input_ids"]
        ids.extend(seg)
        offsets.extend([(a, b)] * len(seg))
    return ids, offsets


def _trainable(labels: Sequence[int], end: int) -> bool:
    """Whether labels[1:end] has a set label (the first token is never a target)."""
    return any(label != IGNORE_INDEX for label in labels[1:end])


def tokenize_samples(
    tokenizer: Any,
    template: str,
    samples: Iterable[Sample],
    train_on: str,
    max_seq_length: int | None = None,
    source: str = "dataset",
) -> tuple[dict[str, list[list[int]]], LengthReport]:
    """Columns input_ids and labels for a datasets.Dataset, cut to `max_seq_length`, and their report.

    Rows without any trainable token are dropped: after templating (a warning), or after the
    cut (counted in the report, with line numbers).
    """
    report = LengthReport(source=source, max_seq_length=max_seq_length)
    cols: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    untrainable = 0
    for sample in samples:
        row = tokenize_sample(tokenizer, template, sample, train_on)
        ids, labels = row["input_ids"], row["labels"]
        n = len(ids)
        if not _trainable(labels, n):
            untrainable += 1
            continue
        report.lengths.append(n)
        if max_seq_length is not None and n > max_seq_length:
            report.truncated += 1
            report.tokens_cut += n - max_seq_length
            if not _trainable(labels, max_seq_length):
                report.answer_cut += 1
                if len(report.answer_cut_lines) < MALFORMED_LINES_SHOWN:
                    report.answer_cut_lines.append(sample.line)
                continue
            if any(label != IGNORE_INDEX for label in labels[max_seq_length:]):
                report.answer_partly_cut += 1
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        cols["input_ids"].append(ids)
        cols["labels"].append(labels)
    if untrainable:
        log.warning("%d samples have no trained tokens after templating and were dropped", untrainable)
    if report.truncated:
        log.warning("%s", report.summary())
    else:
        log.info("%s", report.summary())
    return cols, report


@dataclass
class Datasets:
    """Tokenized train/eval datasets (columns input_ids, labels) and what reading them found."""

    train: Any
    eval: Any | None
    report: DataReport
    eval_report: DataReport | None = None
    lengths: LengthReport | None = None
    eval_lengths: LengthReport | None = None


def split_eval(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded random held-out split; at least one row on each side."""
    import random

    if len(samples) < 2:
        raise InvalidInputError(f"spec.dataset.eval.split: {len(samples)} usable row(s) cannot be split")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(samples) - 1, max(1, round(len(samples) * fraction)))
    held = set(order[:n_eval])
    train = [s for i, s in enumerate(samples) if i not in held]
    return train, [samples[i] for i in sorted(held)]


def build_datasets(
    train_path: Path,
    source: str,
    fmt: str,
    tokenizer: Any,
    template: str,
    train_on: str,
    seed: int,
    eval_split: float | None = None,
    eval_path: Path | None = None,
    eval_source: str | None = None,
    max_seq_length: int | None = None,
) -> Datasets:
    """Reads, converts, splits, tokenizes, cuts to `max_seq_length`: datasets.Dataset objects for SFTTrainer.

    InvalidInputError when no train sample keeps a trainable token.
    """
    from datasets import Dataset

    samples, report = load_samples(train_path, fmt, source)
    eval_samples: list[Sample] | None = None
    eval_report = None
    eval_source = eval_source or (str(eval_path) if eval_path is not None else f"{source} (eval split)")
    if eval_path is not None:
        eval_samples, eval_report = load_samples(eval_path, fmt, eval_source)
    elif eval_split:
        samples, eval_samples = split_eval(samples, eval_split, seed)
    train_cols, lengths = tokenize_samples(tokenizer, template, samples, train_on, max_seq_length, source)
    if not train_cols["input_ids"]:
        raise InvalidInputError(no_trainable_sample_message(lengths))
    train = Dataset.from_dict(train_cols)
    eval_ds = None
    eval_lengths = None
    if eval_samples:
        eval_cols, eval_lengths = tokenize_samples(
            tokenizer, template, eval_samples, train_on, max_seq_length, eval_source
        )
        eval_ds = Dataset.from_dict(eval_cols) if eval_cols["input_ids"] else None
        if eval_ds is None:
            log.warning("no eval sample keeps a trainable token: training without evaluation")
    log.info(
        "tokenized %d train and %d eval samples (%d train tokens, %d trained)",
        len(train),
        len(eval_ds) if eval_ds is not None else 0,
        sum(len(x) for x in train_cols["input_ids"]),
        sum(sum(1 for t in x if t != IGNORE_INDEX) for x in train_cols["labels"]),
    )
    return Datasets(
        train=train,
        eval=eval_ds,
        report=report,
        eval_report=eval_report,
        lengths=lengths,
        eval_lengths=eval_lengths,
    )


def no_trainable_sample_message(lengths: LengthReport) -> str:
    """Why a dataset has nothing to train on, and, when maxSeqLength is the cause, which length would do."""
    if not lengths.answer_cut:
        return f"no usable rows: every sample of {lengths.source} is empty after templating"
    lines = ", ".join(str(n) for n in lengths.answer_cut_lines)
    more = ", ..." if lengths.answer_cut > len(lengths.answer_cut_lines) else ""
    return (
        f"no usable rows: maxSeqLength {lengths.max_seq_length} cuts away the answer of every sample of "
        f"{lengths.source} ({lengths.answer_cut} samples, lines {lines}{more}; {lengths.lengths_text()}); "
        f"maxSeqLength {lengths.suggested_max_seq_length} would keep "
        f"{round(100 * KEEP_WHOLE_SHARE)}% of the samples whole"
    )


def measure_lengths(
    path: Path,
    fmt: str,
    source: str,
    tokenizer: Any,
    template: str,
    train_on: str,
    max_seq_length: int | None,
) -> tuple[DataReport, LengthReport]:
    """The reports the trainer would give for a dataset, without building it (`kubeft estimate --dataset`)."""
    samples, report = load_samples(path, fmt, source)
    _, lengths = tokenize_samples(tokenizer, template, samples, train_on, max_seq_length, source)
    return report, lengths
