"""Fits the estimator's constants (kubeft.estimate.Constants) to measured peaks.

    python bench/fit.py bench/results/estimator_grid.json [MORE.json ...] [--params a,b,c] [--json OUT.json]

Reads calibration points (``estimator_grid.json`` or the raw ``grid-*.json`` files that
bench/grid.py writes; several files are concatenated), skips the ones that did not measure
(``error``, ``oom`` or no ``measured_nvml_bytes``) and searches the named fields of
:class:`~kubeft.estimate.Constants` for the values that bring every prediction closest to the
measured NVML peak. It prints a markdown table (measured, predicted with DEFAULT_CONSTANTS and
with the fitted constants), the worst errors, whether every point passes the acceptance rule of
tests/operator/test_estimate_grid.py (within 10 %, never more than 5 % below) and the changed
fields as a ``Constants(...)`` snippet. It never edits kubeft/estimate.py.

The objective is the sum of squared relative errors (under-estimates count double: an
under-estimate is an OOM on the node the operator chose, an over-estimate a bigger GPU), plus a
steep penalty on every point outside the −3 %..+8 % band (a margin inside the −5 %..+10 %
rule). The search is Hooke–Jeeves pattern search (coordinate steps, pattern moves, halving
steps): deterministic and derivative-free; fields stay non-negative and int fields stay ints.

Exit status: 0 when the fitted constants pass every point, 1 when they do not (the model cannot
fit those points: add a term or fit more fields), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Final, cast, get_type_hints

HERE = Path(__file__).resolve().parent
for _p in (str(HERE), str(HERE.parent)):
    if _p not in sys.path:
        sys.path.append(_p)

import workload  # noqa: E402

from kubeft import estimate as est  # noqa: E402
from kubeft import spec as spec_model  # noqa: E402

Point = Mapping[str, Any]

DEFAULT_PARAMS: Final[tuple[str, ...]] = (
    "act_hidden_coeff",
    "act_kv_coeff",
    "act_mlp_coeff",
    "act_bf16_base_hidden_coeff",
    "act_checkpoint_coeff",
    "act_checkpoint_bf16_base_coeff",
    "offload_gpu_layers",
    "fused_chunk_checkpointed_share",
    "allocator_fraction",
    "allocator_static_fraction",
)
# The acceptance rule of tests/operator/test_estimate_grid.py
RULE_LOW: Final = -0.05
RULE_HIGH: Final = 0.10
# The band the objective aims for (a safety margin inside the rule)
BAND_LOW: Final = -0.03
BAND_HIGH: Final = 0.08
UNDER_WEIGHT: Final = 2.0  # an under-estimate's squared error counts double
PENALTY_LINEAR: Final = 100.0  # per unit of relative error outside the band
PENALTY_QUADRATIC: Final = 1e4
SIGNIFICANT_DIGITS: Final = 4  # fitted floats are rounded to this before they are judged and printed


# --- points -> estimator inputs ----------------------------------------------------------------
def _get(point: Point, key: str, default: Any) -> Any:
    value = point.get(key)
    return default if value is None else value


def point_shape(point: Point) -> est.ModelShape:
    """The model shape of a point: a KNOWN_SHAPES name, or one of the bench's names (``llama-1b``)."""
    name = str(point.get("shape", ""))
    if name.lower() in est.KNOWN_SHAPES:
        return est.known_shape(name)
    if name in workload.SHAPES:
        return est.ModelShape.from_config(workload.SHAPES[name])
    known = [*est.KNOWN_SHAPES, *(s for s in workload.SHAPES if s not in est.KNOWN_SHAPES)]
    raise est.EstimateError(f"unknown model shape {name!r}; known: {', '.join(known)}")


def point_setup(point: Point) -> est.Setup:
    """The estimator's Setup for a point: the one place that turns a grid row into estimator inputs.

    The bench's trainer always trains padding-free batches; LoRA r, the optimizer and the fused
    cross-entropy default to what bench/grid.py runs (16, adamw_8bit, fused) when a row omits them.
    """
    method = point.get("method")
    if method not in est.METHODS:
        raise est.EstimateError(f"unknown method {method!r}; known: {', '.join(est.METHODS)}")
    # the spec the grid's trainer ran (bench/trainers.kubeft_spec), through the one spec model
    hyperparameters: dict[str, Any] = {
        "batchSize": int(point["micro_batch"]),
        "maxSeqLength": int(point["seq_len"]),
        "gradientCheckpointing": bool(point["gradient_checkpointing"]),
        "packing": True,
        "optimizer": str(_get(point, "optimizer", "adamw_8bit")),
    }
    if method != "full":
        hyperparameters["lora"] = {"r": int(_get(point, "lora_r", 16))}
    spec = spec_model.parse_spec(
        {"model": {"source": "bench"}, "dataset": {"source": "bench"}, "hyperparameters": hyperparameters}
    )
    setup = est.Setup.from_spec(spec, cast(est.Method, method))
    return replace(
        setup,
        offload_activations=bool(_get(point, "offload_activations", False)),
        fused_cross_entropy=bool(_get(point, "fused_cross_entropy", True)),
    )


def gpu_tag(gpu: Any) -> str:
    """A GPU's device name, short: ``NVIDIA H100 80GB HBM3`` → ``H100-80GB-HBM3``; '' when unknown."""
    if not gpu or gpu == "cpu":
        return ""
    return "-".join(str(gpu).removeprefix("NVIDIA ").split())


def point_id(point: Point) -> str:
    """``H200/llama-3.1-8b-qlora-2048x4-ckpt``: GPU, shape, method, length × micro-batch, checkpointing."""
    tag = gpu_tag(point.get("gpu"))
    if _get(point, "offload_activations", False):
        ckpt = "offload"
    elif point.get("gradient_checkpointing"):
        ckpt = "ckpt"
    else:
        ckpt = "nockpt"
    size = f"{point.get('seq_len')}x{point.get('micro_batch')}"
    setting = f"{point.get('shape')}-{point.get('method')}-{size}-{ckpt}"
    return f"{tag}/{setting}" if tag else setting


def skip_reason(point: Point) -> str | None:
    """Why a point cannot be used (``None`` when it can): it failed, ran out of memory or measured nothing."""
    if point.get("oom"):
        return f"oom: {point.get('error', '')}".rstrip(": ")
    if point.get("error"):
        return f"error: {point['error']}"
    measured = point.get("measured_nvml_bytes")
    if isinstance(measured, bool) or not isinstance(measured, int | float) or measured <= 0:
        return "no measured_nvml_bytes"
    return None


def usable(points: Sequence[Point]) -> list[tuple[int, Point]]:
    """(index, point) of the points that measured a peak."""
    return [(i, p) for i, p in enumerate(points) if skip_reason(p) is None]


def load_points(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The points of every file, concatenated (``{"points": [...]}`` documents or bare lists)."""
    points: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        rows = data.get("points") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: expected a JSON object with a list of objects under 'points'")
        points.extend(rows)
    return points


# --- errors and the objective ------------------------------------------------------------------
@dataclass(frozen=True)
class PointError:
    """One usable point's prediction against its measurement."""

    index: int  # position in the points given to errors()
    id: str
    measured: int
    predicted: int
    error: float  # (predicted − measured) / measured

    @property
    def passes(self) -> bool:
        """Within the acceptance rule: at most 10 % off and never more than 5 % below."""
        return passes(self.error)


def passes(error: float) -> bool:
    """The rule of tests/operator/test_estimate_grid.py: |error| ≤ 10 % and error ≥ −5 %."""
    return abs(error) <= RULE_HIGH and error >= RULE_LOW


@dataclass(frozen=True)
class _Case:
    index: int
    id: str
    shape: est.ModelShape
    setup: est.Setup
    measured: int


def _cases(points: Sequence[Point]) -> list[_Case]:
    return [
        _Case(i, point_id(p), point_shape(p), point_setup(p), int(p["measured_nvml_bytes"]))
        for i, p in usable(points)
    ]


def _errors(cases: Sequence[_Case], constants: est.Constants) -> list[PointError]:
    out = []
    for c in cases:
        predicted = est.estimate(c.shape, c.setup, constants).total
        out.append(PointError(c.index, c.id, c.measured, predicted, (predicted - c.measured) / c.measured))
    return out


def errors(points: Sequence[Point], constants: est.Constants = est.DEFAULT_CONSTANTS) -> list[PointError]:
    """Relative error of the estimate per usable point (skipped points are left out)."""
    return _errors(_cases(points), constants)


def objective(errs: Iterable[float]) -> float:
    """What the fit minimises: Σ squared relative errors (under-estimates ×2) + penalties outside the band."""
    total = 0.0
    for e in errs:
        total += e * e * (UNDER_WEIGHT if e < 0 else 1.0)
        outside = BAND_LOW - e if e < BAND_LOW else (e - BAND_HIGH if e > BAND_HIGH else 0.0)
        total += PENALTY_LINEAR * outside + PENALTY_QUADRATIC * outside * outside
    return total


# --- the fit -----------------------------------------------------------------------------------
def fittable_fields() -> dict[str, type]:
    """The float and int fields of Constants (the ones a fit can move), with their type."""
    hints = get_type_hints(est.Constants)
    return {f.name: hints[f.name] for f in fields(est.Constants) if hints[f.name] in (int, float)}


def check_params(params: Iterable[str]) -> list[str]:
    """``params`` as a list; raises ValueError naming any that is not a float or int field of Constants."""
    names = list(params)
    kinds = fittable_fields()
    bad = [p for p in names if p not in kinds]
    if bad:
        raise ValueError(
            f"not a float/int field of Constants: {', '.join(bad)}; fittable: {', '.join(kinds)}"
        )
    if not names or len(set(names)) != len(names):
        raise ValueError("give at least one field, each once")
    return names


def _round(value: float, kind: type) -> float:
    if kind is int:
        return float(round(value))
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _constants(
    start: est.Constants, params: Sequence[str], kinds: Mapping[str, type], x: Sequence[float]
) -> est.Constants:
    values: dict[str, Any] = {}
    for name, v in zip(params, x, strict=True):
        values[name] = round(v) if kinds[name] is int else v
    return replace(start, **values)


def fit(
    points: Sequence[Point],
    params: Sequence[str] = DEFAULT_PARAMS,
    start: est.Constants = est.DEFAULT_CONSTANTS,
    *,
    min_step: float = 1e-5,
    max_evaluations: int = 20_000,
) -> est.Constants:
    """The Constants (``start`` with ``params`` moved) that minimise :func:`objective` over the usable points.

    Hooke–Jeeves pattern search: steps start at 25 % of each field's starting value (1.0, or
    1 MiB for an int field, when that is 0) and halve when no coordinate step improves, down to
    ``min_step``. Fields are clamped at 0; int fields are rounded. Floats come back rounded to
    4 significant digits (what gets pasted into kubeft/estimate.py). Deterministic.
    """
    names = check_params(params)
    kinds = {n: fittable_fields()[n] for n in names}
    cases = _cases(points)
    if not cases:
        raise ValueError("no usable points to fit")
    x0 = [float(getattr(start, n)) for n in names]
    scale = [
        abs(v) if v else (float(2**20) if kinds[n] is int else 1.0) for n, v in zip(names, x0, strict=True)
    ]
    evaluations = 0

    def f(x: Sequence[float]) -> float:
        nonlocal evaluations
        evaluations += 1
        return objective(e.error for e in _errors(cases, _constants(start, names, kinds, x)))

    def clamp(x: Iterable[float]) -> list[float]:
        return [max(0.0, round(v) if kinds[n] is int else v) for n, v in zip(names, x, strict=True)]

    def explore(x: list[float], fx: float, step: float) -> tuple[list[float], float]:
        x = list(x)
        for i in range(len(x)):
            for sign in (1.0, -1.0):
                y = list(x)
                y[i] = x[i] + sign * step * scale[i]
                y = clamp(y)
                if y[i] == x[i]:
                    continue
                fy = f(y)
                if fy < fx:
                    x, fx = y, fy
                    break
        return x, fx

    base = clamp(x0)
    f_base = f(base)
    step = 0.25
    while step >= min_step and evaluations < max_evaluations:
        x, fx = explore(base, f_base, step)
        if fx >= f_base:
            step /= 2
            continue
        while fx < f_base and evaluations < max_evaluations:  # pattern moves along the improvement
            previous, base, f_base = base, x, fx
            pattern = clamp(2 * b - p for b, p in zip(base, previous, strict=True))
            x, fx = explore(pattern, f(pattern), step)
    rounded = [_round(v, kinds[n]) for n, v in zip(names, base, strict=True)]
    return _constants(start, names, kinds, rounded)


def changed_fields(fitted: est.Constants, reference: est.Constants = est.DEFAULT_CONSTANTS) -> dict[str, Any]:
    """The fields of ``fitted`` that differ from ``reference``."""
    a, b = asdict(fitted), asdict(reference)
    return {k: v for k, v in a.items() if v != b[k]}


def snippet(changed: Mapping[str, Any]) -> str:
    """``Constants(...)`` with the changed fields, ready to paste into DEFAULT_CONSTANTS."""
    if not changed:
        return "Constants()  # nothing changed"
    body = "".join(f"    {k}={v!r},\n" for k, v in changed.items())
    return f"Constants(\n{body})"


# --- the CLI -----------------------------------------------------------------------------------
def _gib(n: float) -> str:
    return f"{n / est.GIB:.2f}"


def _pct(e: float) -> str:
    return f"{e * 100:+.1f}%"


def _worst(errs: Sequence[PointError]) -> str:
    hi = max(errs, key=lambda e: e.error)
    lo = min(errs, key=lambda e: e.error)
    return f"highest {_pct(hi.error)} (#{hi.index} {hi.id}), lowest {_pct(lo.error)} (#{lo.index} {lo.id})"


def report(
    points: Sequence[Point],
    params: Sequence[str],
    fitted: est.Constants,
    reference: est.Constants = est.DEFAULT_CONSTANTS,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Prints the markdown report; returns its JSON form."""
    before = errors(points, reference)
    after = errors(points, fitted)
    skipped = [(i, point_id(p), skip_reason(p)) for i, p in enumerate(points) if skip_reason(p) is not None]
    out(f"## Estimator fit: {len(before)} points, {len(skipped)} skipped; fitting {', '.join(params)}")
    out("")
    out("| # | point | measured GiB | default GiB | default err | fitted GiB | fitted err |")
    out("|---:|---|---:|---:|---:|---:|---:|")
    for b, a in zip(before, after, strict=True):
        flag = "" if a.passes else " ✗"
        out(
            f"| {b.index} | {b.id} | {_gib(b.measured)} | {_gib(b.predicted)} | {_pct(b.error)} "
            f"| {_gib(a.predicted)} | {_pct(a.error)}{flag} |"
        )
    out("")
    if skipped:
        out("Skipped:")
        for i, pid, why in skipped:
            out(f"- #{i} {pid}: {why}")
        out("")
    ok_before = all(e.passes for e in before)
    ok_after = all(e.passes for e in after)
    out(f"Worst, DEFAULT_CONSTANTS: {_worst(before)}")
    out(f"Worst, fitted:            {_worst(after)}")
    verdict = {True: "pass", False: "FAIL"}
    out(
        f"Rule (|err| ≤ {RULE_HIGH:.0%}, err ≥ {RULE_LOW:.0%}): "
        f"DEFAULT_CONSTANTS {verdict[ok_before]}, fitted {verdict[ok_after]}"
    )
    f_before = objective(e.error for e in before)
    f_after = objective(e.error for e in after)
    out(f"Objective: DEFAULT_CONSTANTS {f_before:.5f}, fitted {f_after:.5f}")
    out("")
    changed = changed_fields(fitted, reference)
    if ok_after:
        out("Fitted constants (changed fields; paste into DEFAULT_CONSTANTS in kubeft/estimate.py):")
    else:
        out("Fitted constants (changed fields; they FAIL the rule: do not paste them):")
    out("")
    out("```python")
    out(snippet(changed))
    out("```")

    def row(e: PointError) -> dict[str, Any]:
        return {"predicted_bytes": e.predicted, "error": e.error, "passes": e.passes}

    return {
        "params": list(params),
        "fitted": {n: getattr(fitted, n) for n in params},
        "changed": changed,
        "pass": ok_after,
        "pass_default": ok_before,
        "points": [
            {
                "index": b.index,
                "id": b.id,
                "measured_nvml_bytes": b.measured,
                "default": row(b),
                "fitted": row(a),
            }
            for b, a in zip(before, after, strict=True)
        ],
        "skipped": [{"index": i, "id": pid, "reason": why} for i, pid, why in skipped],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grids", nargs="+", metavar="GRID.json", help="estimator_grid.json or grid.py outputs")
    p.add_argument(
        "--params", default=",".join(DEFAULT_PARAMS), help="Constants fields to fit, comma-separated"
    )
    p.add_argument("--json", metavar="OUT.json", help="also write the report as JSON")
    a = p.parse_args(argv)
    try:
        params = check_params(s.strip() for s in a.params.split(",") if s.strip())
    except ValueError as exc:
        p.error(str(exc))
    try:
        points = load_points(a.grids)
        if not usable(points):
            raise ValueError(f"no usable points in {', '.join(a.grids)}")
        fitted = fit(points, params)
        result = report(points, params, fitted)
    except (OSError, ValueError, KeyError, est.EstimateError) as exc:  # JSONDecodeError is a ValueError
        print(f"fit.py: error: {exc}", file=sys.stderr)
        return 2
    result["files"] = list(a.grids)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    if result["pass"]:
        return 0
    failing = [
        f"#{r['index']} {r['id']} ({_pct(r['fitted']['error'])})"
        for r in result["points"]
        if not r["fitted"]["passes"]
    ]
    print(
        f"\nFAIL: the model cannot fit these points with {', '.join(params)}: {'; '.join(failing)}. "
        "Add a term to the estimator (or fit more fields with --params), or re-measure them.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
