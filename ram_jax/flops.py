"""Model FLOPs of the Recurrent Attention Model, counted analytically and from jaxprs.

Conventions
-----------
- A FLOP count is ``2 x`` the multiply-adds of the matrix products (``dot_general``) and
  convolutions. Elementwise work (biases, ReLU, tanh, the retina's crop and average pooling,
  the loss, the optimiser) is not counted: it is a few percent of the products here and is
  bound by memory traffic, not by the arithmetic units the ratio to the matmul peak is about.
- Training FLOPs per image are ``3 x`` the forward FLOPs (``TRAIN_FORWARD_MULTIPLE``): the
  backward pass of a dense layer ``y = x W`` computes ``dx = dy W^T`` and ``dW = x^T dy``, two
  products the size of the forward one. This is the usual "model FLOPs" convention (as in model
  FLOPs utilisation): it counts the work of the model, not what a particular autodiff happens to
  execute. JAX skips ``dx`` where no gradient flows (the patch and location inputs, the heads
  behind ``stop_gradient``), so the executed count, which ``jaxpr_flops`` of a training step
  gives, is slightly lower (2.96x the forward for the default 28x28 model).

``jaxpr_flops`` exists because XLA's ``compiled.cost_analysis()`` counts the body of a
``scan`` (a ``while`` loop once compiled) a single time, whatever its trip count, so it
under-counts a rollout of ``T`` glimpses by nearly a factor ``T`` (checked in tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.extend import core as jex_core

__all__ = [
    "TRAIN_FORWARD_MULTIPLE",
    "RamFlops",
    "action_head_flops",
    "conv_flops",
    "dot_general_flops",
    "jaxpr_flops",
    "ram_flops",
    "ram_forward_flops_per_image",
    "xla_cost_flops",
]

# Training FLOPs = this x forward FLOPs (forward once, backward twice: see the module docstring).
TRAIN_FORWARD_MULTIPLE = 3

# Primitives that run their sub-jaxpr(s) exactly once per execution. Names differ across JAX
# versions (``pjit`` became ``jit``; ``remat`` is ``checkpoint``/``remat2``).
_CALL_PRIMITIVES = frozenset(
    {
        "pjit",
        "jit",
        "closed_call",
        "core_call",
        "remat",
        "remat2",
        "checkpoint",
        "custom_jvp_call",
        "custom_vjp_call",
        "custom_vjp_call_jaxpr",
        "custom_lin",
        "xla_call",
    }
)

# Primitives whose sub-jaxpr is a scalar combiner applied per element (a scatter's update, a
# generic reduction's monoid): elementwise work, which is not counted.
_COMBINER_PRIMITIVES = frozenset(
    {"reduce", "reduce_window", "select_and_scatter", "select_and_scatter_add", "sort"}
)


# --------------------------------------------------------------------------------------------
# Analytic count


def ram_forward_flops_per_image(
    *,
    num_glimpses: int,
    glimpse_size: int,
    glimpse_scales: int,
    channels: int = 1,
    patch_hidden: int = 128,
    location_hidden: int = 128,
    glimpse_features: int = 256,
    core: str = "rnn",
    core_hidden: int = 256,
    num_classes: int = 10,
    location_mlp: int = 0,
    action_mlp: int = 0,
) -> int:
    """FLOPs of one RAM episode on one image, as ``rollout`` computes it (any mode).

    Per glimpse: the glimpse network (patch ``S*g*g*C -> Ph``, location ``2 -> Lh``, then
    ``Ph -> F`` and ``Lh -> F``), the core (RNN: ``F -> H`` and ``H -> H``; LSTM: four gates,
    each ``F -> H`` and ``H -> H``), the location head ``H -> 2`` (``H -> M -> 2`` with
    ``location_mlp = M > 0``) and the baseline head ``H -> 1``. The rollout evaluates both
    heads at every glimpse, the last included (its outputs are then dropped), so they count
    ``T`` times. Once per episode: the action head ``H -> K`` (``H -> A -> K`` with
    ``action_mlp = A > 0``).
    """
    if core not in ("rnn", "lstm"):
        raise ValueError(f"unknown core {core!r}; expected 'rnn' or 'lstm'")
    patch_inputs = glimpse_scales * glimpse_size * glimpse_size * channels
    glimpse_net = (
        patch_inputs * patch_hidden
        + 2 * location_hidden
        + patch_hidden * glimpse_features
        + location_hidden * glimpse_features
    )
    gates = 1 if core == "rnn" else 4
    core_net = gates * (glimpse_features * core_hidden + core_hidden * core_hidden)
    location_head = (
        (core_hidden * location_mlp + location_mlp * 2) if location_mlp else core_hidden * 2
    )
    heads = location_head + core_hidden * 1
    multiply_adds = num_glimpses * (glimpse_net + core_net + heads)
    return 2 * multiply_adds + action_head_flops(core_hidden, num_classes, action_mlp)


def action_head_flops(core_hidden: int, num_classes: int, action_mlp: int = 0) -> int:
    """FLOPs of the action network on one state: ``H -> K``, or ``H -> A -> K``."""
    if action_mlp:
        return 2 * (core_hidden * action_mlp + action_mlp * num_classes)
    return 2 * core_hidden * num_classes


class RamFlops(NamedTuple):
    """Model FLOPs per image of one configuration."""

    forward: int  # one episode
    inference: int  # deterministic prediction: one forward episode
    training: int  # TRAIN_FORWARD_MULTIPLE x forward x the training episodes of each image


def ram_flops(config: Any, channels: int = 1) -> RamFlops:
    """``ram_forward_flops_per_image`` from a config (``ram_jax.config.default_config`` fields).

    Training counts every episode a step runs on an image: ``rollouts_per_image`` sampled
    ones, and as many deterministic ones again when ``mean_rollout_weight > 0``. With
    ``intermediate_classification_weight > 0`` each sampled episode also runs the action
    network at every glimpse (the last included, its output then dropped).
    """
    if config.model != "ram":
        raise ValueError(f"ram_flops counts the RAM only, not model {config.model!r}")
    episodes = config.rollouts_per_image * (2 if config.mean_rollout_weight > 0 else 1)
    forward = ram_forward_flops_per_image(
        num_glimpses=config.num_glimpses,
        glimpse_size=config.glimpse_size,
        glimpse_scales=config.glimpse_scales,
        channels=channels,
        patch_hidden=config.patch_hidden,
        location_hidden=config.location_hidden,
        glimpse_features=config.glimpse_features,
        core=config.core,
        core_hidden=config.core_hidden,
        num_classes=config.num_classes,
        location_mlp=config.location_mlp,
        action_mlp=config.action_mlp,
    )
    training = forward * episodes
    if config.intermediate_classification_weight > 0:
        training += (
            config.rollouts_per_image
            * config.num_glimpses
            * action_head_flops(config.core_hidden, config.num_classes, config.action_mlp)
        )
    return RamFlops(forward, forward, TRAIN_FORWARD_MULTIPLE * training)


# --------------------------------------------------------------------------------------------
# Counting a jaxpr


def dot_general_flops(eqn: Any) -> int:
    """2 x (batch x contracting x lhs-free x rhs-free sizes) of a ``dot_general`` equation."""
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    # The lhs holds batch x contracting x lhs-free elements; the rhs adds its free dimensions.
    rhs_free = [d for i, d in enumerate(rhs) if i not in set(rhs_contract) | set(rhs_batch)]
    return 2 * math.prod(lhs) * math.prod(rhs_free)


def conv_flops(eqn: Any) -> int:
    """2 x multiply-adds of a ``conv_general_dilated`` equation.

    Every output element sums over one output feature's slice of the kernel, i.e. over
    ``kernel.size / out_features`` products (feature and batch groups included).
    """
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 2 * math.prod(out) * (math.prod(rhs) // out_features)


def _sub_jaxprs(params: dict[str, Any]) -> Iterator[Any]:
    """Every ``Jaxpr``/``ClosedJaxpr`` among an equation's parameters (also inside tuples)."""
    for value in params.values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, (jex_core.Jaxpr, jex_core.ClosedJaxpr)):
                yield item


def _count(jaxpr: Any) -> int:
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # a ClosedJaxpr wraps its Jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += dot_general_flops(eqn)
        elif name == "conv_general_dilated":
            total += conv_flops(eqn)
        elif name == "scan":
            # The body runs ``length`` times; cost_analysis counts it once.
            total += eqn.params["length"] * _count(eqn.params["jaxpr"])
        elif name == "cond":
            # One branch runs; the most expensive is an upper bound that is exact when the
            # branches cost the same (as after differentiating a ``cond``).
            total += max(_count(branch) for branch in eqn.params["branches"])
        elif name == "while":
            raise ValueError(
                "jaxpr_flops: a while loop has no static trip count, so its FLOPs cannot be "
                "counted; use lax.scan (or fori_loop with static bounds, which lowers to scan)"
            )
        else:
            subs = list(_sub_jaxprs(eqn.params))
            if not subs or name in _COMBINER_PRIMITIVES or name.startswith("scatter"):
                continue
            if name not in _CALL_PRIMITIVES:
                # Refuse rather than guess how often an unknown higher-order primitive runs.
                raise NotImplementedError(
                    f"jaxpr_flops: don't know how often {name!r} runs its sub-jaxprs"
                )
            total += sum(_count(sub) for sub in subs)
    return total


def _is_traced(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def _bind_static(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Callable[..., Any], list[Any]]:
    """``fn`` as a function of the array leaves of ``args`` only, and those leaves.

    Any other leaf (a Flax module, a ``RolloutSpec``, a Python number) is closed over as a
    static value, so ``jaxpr_flops(rollout, model, params, images, key, spec)`` works as written.
    """
    leaves, treedef = jax.tree.flatten(args)
    traced = [i for i, leaf in enumerate(leaves) if _is_traced(leaf)]

    def bound(*arrays: Any) -> Any:
        full = list(leaves)
        for i, array in zip(traced, arrays, strict=True):
            full[i] = array
        return fn(*jax.tree.unflatten(treedef, full), **kwargs)

    return bound, [leaves[i] for i in traced]


def jaxpr_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` from its jaxpr: matrix products and convolutions.

    ``jax.make_jaxpr`` traces ``fn`` (nothing runs) and the jaxpr is walked recursively:
    ``dot_general`` and ``conv_general_dilated`` count ``2 x`` their multiply-adds, a ``scan``
    body counts ``length`` times, a ``cond`` its most expensive branch, and call-like primitives
    (``jit``/``pjit``, ``closed_call``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``)
    their body once. A ``while`` loop raises ``ValueError`` (its trip count is unknown) and an
    unknown higher-order primitive ``NotImplementedError``.

    Array leaves of ``args`` (``jax.Array``, NumPy arrays, ``jax.ShapeDtypeStruct``) are traced;
    every other leaf (modules, specs, Python numbers) and ``kwargs`` are passed as static values.
    """
    bound, arrays = _bind_static(fn, args, kwargs)
    return _count(jax.make_jaxpr(bound)(*arrays))


def xla_cost_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """XLA's own estimate: ``flops`` of ``jit(fn).lower(*args).compile().cost_analysis()``.

    For comparison only: XLA counts a loop body once, whatever its trip count. Older JAX
    returns a list with one dict per device program, newer a dict. Arguments as for
    ``jaxpr_flops``.
    """
    bound, arrays = _bind_static(fn, args, kwargs)
    analysis = jax.jit(bound).lower(*arrays).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    if not analysis or "flops" not in analysis:
        raise RuntimeError(f"XLA cost analysis reported no flops: {analysis!r}")
    return float(analysis["flops"])
