"""Repair int8 within an accuracy budget by changing the recipe, never the graph.

Order (cheapest first): the target's recipe as chosen → the other calibration methods
(keep the best) → cross-layer equalization (edgecompress/quantize/equalize.py) → bias correction
toggled (edgecompress/quantize/biascorrect.py) → keep the nodes the diagnosis ranks most damaging in fp32, found by
doubling + bisection (few re-quantizations) or greedily (one node at a time, a node
kept only if it helps). A transformer's dynamic int8 instead tries 8-bit uint8 weights (where the recipe has 7-bit
ones) and other SmoothQuant strengths, then single MatMuls in fp32, then whole roles of the repeated block. For a detector, the decode tail (edgecompress/quantize/detect_tail.py)
is kept in fp32 first, before any of these. Every try is recorded with its accuracy and latency, and why
the search stopped; when the budget is missed the best engine is kept and the caller
raises `BudgetNotMetError` unless the user allowed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from edgecompress.engines.base import Runner
from edgecompress.core.errors import BudgetNotMetError, QuantizationError
from edgecompress.core.progress import warn
from edgecompress.measure.evaluate import EvalSet, Evaluation, evaluate
from edgecompress.measure.fidelity import Budget, FidelityOptions
from edgecompress.quantize.diagnose import Diagnosis, LayerError, diagnose_or_warn
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.quantize.transformer import SMOOTH_ALPHAS_TO_TRY

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def accuracy_drop(evaluation: Evaluation) -> float:
    if evaluation.accuracy_reference is None or evaluation.accuracy_engine is None:
        return 0.0
    return evaluation.accuracy_reference - evaluation.accuracy_engine


@dataclass
class RepairTry:
    step: str
    recipe: QuantRecipe
    model_path: Path
    evaluation: Evaluation
    met: bool
    latency_ms: float | None = None
    fp32_latency_ms: float | None = None
    seconds: float = 0.0  # what the try cost: quantization, evaluation and timing

    def quality(self) -> tuple[float, ...]:
        """Higher is better: each output's task metric (a classifier's accuracy drop negated), then the first
        output's top-1 agreement and cosine."""
        by_task = tuple(item.result.score for item in self.evaluation.fidelity)
        return (*by_task, self.evaluation.agreement.top1, self.evaluation.agreement.cosine)

    def to_dict(self) -> dict[str, Any]:
        e = self.evaluation
        speedup = self.fp32_latency_ms / self.latency_ms if self.latency_ms and self.fp32_latency_ms else None
        return {
            "step": self.step,
            "calibration_method": self.recipe.calibration_method,
            "nodes_to_exclude": list(self.recipe.nodes_to_exclude),
            "accuracy": e.accuracy_engine,
            "accuracy_drop": None if e.accuracy_engine is None else round(accuracy_drop(e), 3),
            "agreement": round(e.agreement.top1, 4),
            "cosine": round(e.agreement.cosine, 5),
            "fidelity": {item.output: {item.result.metric: round(item.result.value, 5)} for item in e.fidelity},
            "latency_ms_p50": self.latency_ms,
            "fp32_latency_ms_p50": self.fp32_latency_ms,
            "speedup_vs_fp32": None if speedup is None else round(speedup, 3),
            "met": self.met,
            "seconds": round(self.seconds, 1),
            "model_path": str(self.model_path),
        }


@dataclass(frozen=True)
class RepairOptions:
    calibration_methods: tuple[str, ...] = CALIBRATION_METHODS
    max_excluded_layers: int = 8  # layers (a layer and the producers of its inputs) kept in fp32
    strategy: Literal["bisect", "greedy"] = "bisect"
    try_equalize: bool = True  # one try with cross-layer equalization before keeping nodes in fp32
    try_bias_correction: bool = True  # one try with bias correction toggled (edgecompress/quantize/biascorrect.py) likewise
    diagnose_samples: int = 64
    latency_runs: int = 30  # timed runs per try, interleaved with fp32; 0 = do not time tries


@dataclass
class RepairSession:
    """What a repair needs from the build: how to quantize a recipe and run a model on the target."""

    fp32_path: Path
    eval_set: EvalSet
    quantize: Callable[[QuantRecipe], Path]
    load: Callable[[Path], Runner]
    reference: Runner
    budget: Budget
    bench_feeds: dict[str, np.ndarray] | None = None
    options: RepairOptions = RepairOptions()
    fidelity: FidelityOptions = FidelityOptions()
    # fp32 nodes a detector's first repair try keeps out of int8 (the decode tail); replaceable by a better finder
    detector_tail: Callable[[Path], list[str]] | None = None
    timing_reference: Runner | None = None  # the fp32 runner timed beside each try, when `reference` replays outputs
    tries: list[RepairTry] = field(default_factory=list)

    def attempt(self, step: str, recipe: QuantRecipe) -> RepairTry:
        import time

        from edgecompress.core.progress import info

        started = time.perf_counter()
        model_path = self.quantize(recipe)
        runner = self.load(model_path)
        evaluation = evaluate(runner, self.reference, self.eval_set, fidelity=self.fidelity)
        result = RepairTry(step, recipe, model_path, evaluation, self.budget.met(evaluation))
        if self.options.latency_runs and self.bench_feeds is not None:
            from edgecompress.measure.bench import benchmark

            fp32 = self.timing_reference or self.reference
            stats, _ = benchmark({"try": runner, "fp32": fp32}, self.bench_feeds, runs=self.options.latency_runs, warmup=3)
            result.latency_ms, result.fp32_latency_ms = stats["try"].p50, stats["fp32"].p50
        result.seconds = time.perf_counter() - started
        self.tries.append(result)
        headline = self.budget.headline(evaluation)
        info(f"repair: {step}: {headline.fidelity.result.describe()} ({headline.fidelity.task}) -> "
             f"{'meets' if result.met else 'misses'} budget ({headline.describe_budget()})")
        return result


@dataclass
class RepairResult:
    best: RepairTry
    tries: list[RepairTry]
    met: bool
    stop_reason: str
    budget: Budget
    diagnosis: Diagnosis | None = None

    @property
    def fp32_nodes(self) -> list[str]:
        return list(self.best.recipe.nodes_to_exclude)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.describe(self.best.evaluation),
            "met": self.met,
            "stop_reason": self.stop_reason,
            "fp32_nodes": self.fp32_nodes,
            "chosen_try": self.tries.index(self.best),
            "tries": [t.to_dict() for t in self.tries],
        }

    def raise_if_unmet(self, allow_over_budget: bool) -> None:
        if not self.met and not allow_over_budget:
            raise BudgetNotMetError(
                f"int8 misses the budget ({self.budget.describe(self.best.evaluation)}): {self.stop_reason}; best try kept "
                f"({self.best.step}, {self.budget.headline(self.best.evaluation).fidelity.result.describe()})",
                "raise --max-excluded-layers, loosen the budget, ship fp32, or pass --allow-over-budget",
            )


def _pick_best(tries: list[RepairTry]) -> RepairTry:
    """A try that meets the budget with the fewest fp32 nodes, else the most accurate."""
    met = [t for t in tries if t.met]
    if met:
        return min(met, key=lambda t: (len(t.recipe.nodes_to_exclude), tuple(-q for q in t.quality())))
    return max(tries, key=lambda t: t.quality())


def _try_decode_tail(session: RepairSession, first: RepairTry) -> RepairTry | None:
    """A detector's decode tail (box arithmetic in pixels concatenated with scores in [0, 1]) in fp32."""
    if session.detector_tail is None or not any(item.task == "detect" for item in first.evaluation.fidelity):
        return None
    tail = [node for node in session.detector_tail(session.fp32_path) if node not in first.recipe.nodes_to_exclude]
    if not tail:
        return None
    return session.attempt("decode tail in fp32", first.recipe.with_options(nodes_to_exclude=first.recipe.nodes_to_exclude + tuple(tail)))


def _try_recipe_changes(session: RepairSession, recipe: QuantRecipe) -> RepairTry:
    first = session.attempt(f"target recipe ({recipe.calibration_method})", recipe)
    if first.met:
        return first
    tail = _try_decode_tail(session, first)
    if tail is not None and tail.met:
        return tail
    if tail is not None and tail.quality() > first.quality():
        recipe = tail.recipe  # later steps keep the tail in fp32
    if recipe.activations == "dynamic" and recipe.reduce_range:
        # 7-bit weights keep VPMADDUBSW (x86 without VNNI) from saturating; asymmetric 8-bit uint8 weights take the
        # u8u8 kernels instead, which widen to 16 bits first: slower, but a full 8 bits for the smoothed weights
        # (a sentence encoder, every MatMul int8: neighbours 89.5% -> 93.5%, benchmarks/transformer_encoders.py)
        wide = session.attempt("uint8 weights (8-bit, no reduce_range)", replace(recipe, weight_type="uint8", reduce_range=False))
        if wide.quality() > first.quality():
            if wide.met:
                return wide
            recipe = wide.recipe
    if recipe.smooth_alpha is not None:  # a transformer's MatMuls: how much of the outliers moves into the weights
        for alpha in SMOOTH_ALPHAS_TO_TRY:
            if alpha != recipe.smooth_alpha:
                session.attempt(f"SmoothQuant α={alpha:g}", replace(recipe, smooth_alpha=alpha))
    if recipe.activations == "dynamic" or recipe.op_types:
        # ranges per call leave no calibration to choose; equalization and bias correction act on convolutions
        return max(session.tries, key=lambda t: t.quality())
    for method in session.options.calibration_methods:
        if method != recipe.calibration_method:
            try:
                session.attempt(f"calibration {method}", recipe.with_options(calibration_method=method))
            except QuantizationError as failed:  # e.g. ORT's entropy collector on ragged activations: skip, say so
                warn(f"repair: calibration {method} cannot run on this model ({failed.problem}); skipped")
    best = max(session.tries, key=lambda t: t.quality())
    if session.options.try_equalize and not best.recipe.equalize and not best.met:
        best = max([best, session.attempt("cross-layer equalization", best.recipe.with_options(equalize=True))], key=lambda t: t.quality())
    if session.options.try_bias_correction and not best.met:  # the other setting: it usually helps, not always
        toggled = not best.recipe.bias_correction
        session.attempt(f"bias correction {'on' if toggled else 'off'}", best.recipe.with_options(bias_correction=toggled))
    return max(session.tries, key=lambda t: t.quality())


def _excluding(base: RepairTry, groups: list[tuple[str, ...]]) -> QuantRecipe:
    nodes = [node for group in groups for node in group]
    return base.recipe.with_options(nodes_to_exclude=tuple(dict.fromkeys(base.recipe.nodes_to_exclude + tuple(nodes))))


Groups = list[tuple[str, ...]]


def _node_names(onnx_path: Path) -> set[str]:
    """The fp32 model's node names: the only names nodes_to_exclude may hold."""
    import onnx

    return {node.name for node in onnx.load(str(onnx_path), load_external_data=False).graph.node}


HOPELESS_AFTER_LAYERS = 4  # with this many of the most damaged layers in fp32 ...
HOPELESS_GAP_CLOSED = 0.5  # ... having closed less than this share of the gap to the budget, stop: more will not do


def _bisect(session: RepairSession, base: RepairTry, ranking: Groups, limit: int) -> str:
    """Double k (top-k ranked layers in fp32) until the budget is met, then bisect down to the smallest k. Stop
    early when the most damaged layers in fp32 close too little of the gap (the ranked layers are the worst ones:
    the next ones help less), so the ladder moves on instead of spending its time here."""
    low, high, k = 0, None, 1
    gap = session.budget.shortfall(base.evaluation)
    while k <= min(limit, len(ranking)):
        attempt = session.attempt(f"exclude top {k}", _excluding(base, ranking[:k]))
        if attempt.met:
            high = k
            break
        closed = 1 - session.budget.shortfall(attempt.evaluation) / gap if gap > 0 else 1.0
        if k >= HOPELESS_AFTER_LAYERS and closed < HOPELESS_GAP_CLOSED:
            return (f"the {k} most damaged layers in fp32 closed only {max(closed, 0):.0%} of the gap to the budget: "
                    "keeping layers in fp32 will not reach it")
        low, k = k, k * 2
    if high is None:
        last = min(limit, len(ranking))
        if low < last and session.attempt(f"exclude top {last}", _excluding(base, ranking[:last])).met:
            high = last
        else:
            return f"layer limit reached: the {last} most damaged layers in fp32 still miss the budget" if last == limit else (
                f"ranking exhausted: all {last} quantized layers tried")
    while high - low > 1:
        middle = (low + high) // 2
        if session.attempt(f"exclude top {middle}", _excluding(base, ranking[:middle])).met:
            high = middle
        else:
            low = middle
    return f"budget met with the {high} most damaged layer(s) in fp32"


def _greedy(session: RepairSession, base: RepairTry, ranking: Groups, limit: int) -> str:
    """Add ranked layers one at a time; keep a layer only if the try improves on the best so far."""
    current, kept = base, 0
    for group in ranking:
        if kept >= limit:
            return f"layer limit reached: {limit} layers in fp32 still miss the budget"
        candidate = session.attempt(f"exclude {group[0]}", _excluding(current, [group]))
        if candidate.met:
            return f"budget met with {len(candidate.recipe.nodes_to_exclude)} node(s) in fp32"
        if candidate.quality() > current.quality():
            current, kept = candidate, kept + 1
    return f"ranking exhausted: all {len(ranking)} quantized layers tried"


def layer_roles(onnx_path: Path) -> dict[str, str]:
    """Each weighted node's role in a transformer's repeated block: its op, its weight's shape and the op that feeds
    it ('MatMul [1536, 384] after Mul' is every block's FFN output). Structural, because exporters name nodes
    differently: the TorchScript exporter writes '/encoder/layer.3/output/dense/MatMul', the dynamo exporter
    'node_MatMul_131'."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    producer = {output: node.op_type for node in graph.node for output in node.output}
    return {node.name: f"{node.op_type} {shapes.get(node.input[1], 'activations') if len(node.input) > 1 else ''} "
                       f"after {producer.get(node.input[0], 'the input') if node.input else ''}"
            for node in graph.node}


def _by_role(ranked: list[LayerError], roles: dict[str, str]) -> Groups:
    """A transformer's layers grouped by their role in the repeated block, the roles whose layers add most noise first.

    Tried after single MatMuls: one MatMul's measured error is a noisy guide, while the same MatMul in every block
    (the FFN output after GELU, the attention projections) is where outliers repeat. Measured on a sentence encoder
    with 7-bit weights, keeping the six FFN-output MatMuls float took neighbour agreement from 92.5% to 95% and no
    single layer did; with 8-bit weights the four noisiest single MatMuls reach 95% at a sixth of the cost."""
    grouped: dict[str, list[LayerError]] = {}
    for layer in ranked:
        grouped.setdefault(roles.get(layer.node, layer.node), []).append(layer)
    # by the noise a layer of the role adds on average: query, key and value share one role of three layers a block,
    # and a sum would keep them float first for their number, not their damage
    ordered = sorted(grouped.values(), key=lambda layers: -sum(
        layer.added_noise if layer.added_noise is not None else layer.lost_db for layer in layers) / len(layers))
    return [tuple(dict.fromkeys(node for layer in layers for node in layer.exclusion_group)) for layers in ordered]


def repair(session: RepairSession, recipe: QuantRecipe) -> RepairResult:
    """Search recipes until one meets the budget or the search runs out (see module doc)."""
    session.budget.check_measurable(session.eval_set)
    base = _try_recipe_changes(session, recipe)
    if base.met:
        return RepairResult(_pick_best(session.tries), session.tries, True, f"met by {base.step}", session.budget)
    # The most accurate calibration is not always the one that needs the fewest fp32 layers
    # (clipping spreads damage over many layers, one outlier channel damages one), so the
    # exclusion search also starts from the target's own recipe when that differs.
    # Ranges per call (dynamic int8) have no calibration to clip: the best recipe is the only start.
    starts = [base] + [t for t in session.tries[:1] if t.recipe != base.recipe and base.recipe.activations != "dynamic"]
    search = _bisect if session.options.strategy == "bisect" else _greedy
    reasons, diagnosis = [], None
    for start in starts:
        start_diagnosis = diagnose_or_warn(
            session.fp32_path, start.model_path, session.eval_set.inputs, session.options.diagnose_samples, session.eval_set.layout
        )
        diagnosis = diagnosis or start_diagnosis
        ranked = start_diagnosis.ranking() if start_diagnosis else []  # no diagnosis: nothing to rank, no exclusions
        in_model = _node_names(session.fp32_path)  # the prepared model may add nodes (e.g. Transpose_token_N)
        rankings = [("", [g.exclusion_group for g in ranked])]
        if start.recipe.op_types:  # a transformer: where single MatMuls cannot reach the budget, whole roles may
            rankings.append((" by role", _by_role(ranked, layer_roles(session.fp32_path))))
        for how, groups in rankings:
            ranking = [group for g in groups if g[0] not in start.recipe.nodes_to_exclude
                       if (group := tuple(node for node in g if node in in_model))]
            reasons.append(f"from {start.step}{how}: {search(session, start, ranking, session.options.max_excluded_layers)}")
            if any(t.met for t in session.tries):
                break
    best = _pick_best(session.tries)
    return RepairResult(best, session.tries, best.met, "; ".join(reasons), session.budget, diagnosis)
