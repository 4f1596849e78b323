"""Optimizers against plain-NumPy versions of the published equations, plus their properties;
argument checks, the same for a class built directly as for its factory."""

import operator
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import fnn
from fnn import clipping, schedules
from fnn import optimizers as opt

STEPS = 50


@jax.jit
def jitted_update(optimizer, grads, state, params):
    return optimizer.update(grads, state, params)


# ----------------------------------------------------------------------------- NumPy references
# Each runs the published rule for one array over a sequence of gradients. The runner
# casts hyperparameters to the array's dtype first, so float32 runs stay float32.


def ref_sgd(p, gs, lr, momentum=0.0, nesterov=False):
    v = np.zeros_like(p)
    for g in gs:
        v = momentum * v + g
        p = p - lr * (g + momentum * v if nesterov else v)
    return p


def ref_rmsprop(p, gs, lr, decay=0.9, eps=1e-8, momentum=0.0, centered=False):
    square_avg, grad_avg, buf = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for g in gs:
        square_avg = decay * square_avg + (1 - decay) * g * g
        if centered:
            grad_avg = decay * grad_avg + (1 - decay) * g
            denom = np.sqrt(square_avg - grad_avg * grad_avg) + eps
        else:
            denom = np.sqrt(square_avg) + eps
        if momentum > 0:
            buf = momentum * buf + g / denom
            p = p - lr * buf
        else:
            p = p - lr * g / denom
    return p


def ref_adagrad(p, gs, lr, initial_accumulator=0.0, eps=1e-10):
    acc = np.full_like(p, initial_accumulator)
    for g in gs:
        acc = acc + g * g
        p = p - lr * g / (np.sqrt(acc) + eps)
    return p


def ref_adam(p, gs, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(gs, start=1):
        p = p * (1 - lr * weight_decay)  # AdamW, PyTorch order; a no-op for Adam
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def np_clip_global(gs, max_norm):  # Pascanu et al. 2013, Algorithm 1
    norm = np.sqrt(sum(np.sum(g * g) for g in gs))
    return gs if norm <= max_norm else [g * (max_norm / norm) for g in gs]


def np_clip_value(gs, max_value):
    return [np.clip(g, -max_value, max_value) for g in gs]


def clip_adam(lr, max_norm):
    return clipping.clip_by_global_norm(opt.adam(lr), max_norm)


def clip_sgd(lr, momentum, max_value):
    return clipping.clip_by_value(opt.sgd(lr, momentum), max_value)


# id: (fnn factory, NumPy reference, (NumPy gradient clip, its argument) or None, hyperparameters)
CASES = {
    "sgd": (opt.sgd, ref_sgd, None, dict(lr=0.05)),
    "sgd_momentum": (opt.sgd, ref_sgd, None, dict(lr=0.05, momentum=0.9)),
    "sgd_nesterov": (opt.sgd, ref_sgd, None, dict(lr=0.05, momentum=0.9, nesterov=True)),
    "rmsprop": (opt.rmsprop, ref_rmsprop, None, dict(lr=0.01)),
    "rmsprop_momentum": (opt.rmsprop, ref_rmsprop, None, dict(lr=0.01, decay=0.8, momentum=0.9)),
    "rmsprop_centered": (opt.rmsprop, ref_rmsprop, None, dict(lr=0.01, eps=1e-6, momentum=0.5, centered=True)),
    "adagrad": (opt.adagrad, ref_adagrad, None, dict(lr=0.1)),
    "adagrad_acc0.1": (opt.adagrad, ref_adagrad, None, dict(lr=0.1, initial_accumulator=0.1)),
    "adam": (opt.adam, ref_adam, None, dict(lr=0.01, b1=0.8, b2=0.99)),
    "adamw": (opt.adamw, ref_adam, None, dict(lr=0.01, weight_decay=0.1)),
    "clip_global_norm_adam": (clip_adam, ref_adam, (np_clip_global, "max_norm"), dict(lr=0.01, max_norm=5.0)),
    "clip_value_sgd": (clip_sgd, ref_sgd, (np_clip_value, "max_value"), dict(lr=0.05, momentum=0.5, max_value=0.5)),
}


def make(case, **changes):
    factory, _, _, hp = CASES[case]
    return factory(**{**hp, **changes})


def random_tree(rng, dtype, scale=1.0):
    """A params-shaped tree of mixed shapes: a (3, 4) matrix and a (4,) vector nested, a scalar."""

    def leaf(*shape):
        return np.asarray(scale * rng.normal(size=shape), dtype)

    return {"dense": {"w": leaf(3, 4), "b": [leaf(4)]}, "scale": leaf()}


def reference_run(case, params, grad_seq, dtype):
    _, ref, clip, hp = CASES[case]
    hp = {k: dtype(v) if isinstance(v, float) else v for k, v in hp.items()}
    leaves_seq = [jax.tree.leaves(g) for g in grad_seq]
    if clip is not None:
        clip_fn, name = clip
        limit = hp.pop(name)
        leaves_seq = [clip_fn(gs, limit) for gs in leaves_seq]
    return [ref(p, [gs[i] for gs in leaves_seq], **hp) for i, p in enumerate(jax.tree.leaves(params))]


@pytest.mark.parametrize(
    "dtype, rtol, atol", [(np.float64, 1e-12, 1e-13), (np.float32, 1e-5, 1e-6)], ids=["f64", "f32"]
)
@pytest.mark.parametrize("case", CASES)
def test_matches_numpy_reference(case, dtype, rtol, atol):
    rng = np.random.default_rng(0)
    params = random_tree(rng, dtype)
    # gradient scale varies over 2 decades, so global-norm clipping is active on some steps only
    grad_seq = [random_tree(rng, dtype, scale=10 ** rng.uniform(-1, 1)) for _ in range(STEPS)]
    optimizer = make(case)
    p, state = jax.tree.map(jnp.asarray, params), optimizer.init(params)
    for grads in grad_seq:
        p, state = jitted_update(optimizer, grads, state, p)
    expected = jax.tree.unflatten(jax.tree.structure(p), reference_run(case, params, grad_seq, dtype))
    chex.assert_trees_all_close(p, expected, rtol=rtol, atol=atol)
    chex.assert_type(jax.tree.leaves((p, expected, state[1:])), dtype)
    assert state.count.dtype == jnp.int32 and int(state.count) == STEPS


# ----------------------------------------------------------------------------- descent


def quadratic(x):  # convex, condition number 10, minimum 0 at the origin
    return 0.5 * jnp.sum(jnp.array([1.0, 10.0]) * x["x"] ** 2)


def rosenbrock(x):
    a, b = x["x"]
    return (1 - a) ** 2 + 100 * (b - a**2) ** 2


@jax.jit
def descend(optimizer, params, f_index):
    """200 steps of gradient descent on quadratic (f_index 0) or Rosenbrock (1)."""

    def step(carry, _):
        params, state = carry
        grads = jax.grad(lambda p: jax.lax.switch(f_index, [quadratic, rosenbrock], p))(params)
        return optimizer.update(grads, state, params), None

    return jax.lax.scan(step, (params, optimizer.init(params)), length=200)[0][0]


# learning rates picked per problem: (quadratic from (1, 1), Rosenbrock from (-1.2, 1)), 200 steps
DESCENT_LR = {
    "sgd": (0.05, 5e-4),
    "sgd_momentum": (0.01, 1e-4),
    "sgd_nesterov": (0.01, 1e-4),
    "rmsprop": (0.01, 1e-3),
    "rmsprop_momentum": (0.01, 1e-4),
    "rmsprop_centered": (0.01, 1e-4),
    "adagrad": (0.1, 0.1),
    "adagrad_acc0.1": (0.1, 0.1),
    "adam": (0.05, 0.01),
    "adamw": (0.05, 0.01),
    "clip_global_norm_adam": (0.05, 0.01),
    "clip_value_sgd": (0.05, 5e-4),
}


@pytest.mark.parametrize(
    "problem, f, start, factor",
    [(0, quadratic, [1.0, 1.0], 1e-3), (1, rosenbrock, [-1.2, 1.0], 0.5)],  # f(start) = 5.5 and 24.2
    ids=["quadratic", "rosenbrock"],
)
@pytest.mark.parametrize("case", CASES)
def test_decreases_objective(case, problem, f, start, factor):
    optimizer = make(case, lr=DESCENT_LR[case][problem])
    params = {"x": jnp.array(start)}
    final = f(descend(optimizer, params, problem))
    assert np.isfinite(float(final)) and final < factor * f(params)


# ----------------------------------------------------------------------------- single properties


class TestStepWithAndWithoutJit(chex.TestCase):
    """Properties of one update, compiled (``with_jit``, as fit runs it) and op by op
    (``without_jit``, as a user calling ``optimizer.update`` gets it): XLA's rewrites under
    jit must not change the rule's numbers beyond the stated tolerances."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((0.9, 0.999), (0.5, 0.9))
    def test_adam_first_step_has_magnitude_lr(self, b1, b2):
        lr = 0.01
        params = {"a": jnp.array([0.3, -1.0, 2.0, 0.0]), "b": jnp.array([[1.0, 5.0]])}
        grads = {"a": jnp.array([1e-3, -2.5, 1e3, -0.7]), "b": jnp.array([[4.0, -1e-2]])}
        optimizer = opt.adam(lr, b1=b1, b2=b2)
        new, _ = self.variant(lambda o, g, s, p: o.update(g, s, p))(optimizer, grads, optimizer.init(params), params)
        steps = jax.tree.map(lambda p, q: q - p, params, new)
        chex.assert_trees_all_close(
            steps, jax.tree.map(lambda g: -lr * jnp.sign(g), grads), rtol=1e-4
        )  # eps / |g| <= 1e-5

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(lr=["constant", "schedule"], dtype=["float64", "float32"])
    def test_adamw_zero_gradient_shrinks_by_one_minus_lr_wd(self, lr, dtype):
        lr = {"constant": 0.1, "schedule": schedules.exponential_decay(0.1, 0.5, 2)}[lr]
        dtype = np.dtype(dtype).type
        wd = 0.3
        optimizer = opt.adamw(lr, weight_decay=wd)
        update = self.variant(lambda o, g, s, p: o.update(g, s, p))
        params = {"w": jnp.array([[1.5, -2.0], [0.25, 3.0]], dtype), "b": jnp.array([0.5, -1.0], dtype)}
        zeros = jax.tree.map(jnp.zeros_like, params)
        state = optimizer.init(params)
        for _ in range(5):
            lr_t = dtype(optimizer.learning_rate(state))
            new, state = update(optimizer, zeros, state, params)
            shrunk = {name: p * (1 - lr_t * dtype(wd)) for name, p in params.items()}
            chex.assert_trees_all_close(new, shrunk, rtol=2 * np.finfo(dtype).eps, atol=0)
            params = new


@pytest.mark.parametrize("initial_accumulator", [0.0, 0.1])
def test_adagrad_effective_step_shrinks(initial_accumulator):
    lr, rng = 0.1, np.random.default_rng(3)
    optimizer = opt.adagrad(lr, initial_accumulator=initial_accumulator)
    params = {"w": jnp.zeros((2, 3))}
    state = optimizer.init(params)
    effective, sum_sq = [], initial_accumulator
    for _ in range(20):
        g = rng.uniform(0.5, 2.0, size=(2, 3)) * rng.choice([-1.0, 1.0], size=(2, 3))
        new, state = jitted_update(optimizer, {"w": g}, state, params)
        effective.append(-(new["w"] - params["w"]) / g)  # per-coordinate step per unit gradient
        sum_sq = sum_sq + g * g
        np.testing.assert_allclose(effective[-1], lr / (np.sqrt(sum_sq) + 1e-10), rtol=1e-10)
        params = new
    assert np.all(np.diff(np.stack(effective), axis=0) < 0)


def some_state(optimizer, params, rng, steps=3):
    """A state with non-zero buffers, so momentum terms matter."""
    state = optimizer.init(params)
    for _ in range(steps):
        _, state = jitted_update(optimizer, jax.tree.map(lambda x: rng.normal(size=x.shape), params), state, params)
    return state


VMAP_CASES = {
    "sgd_momentum_lr": (lambda x: opt.sgd(x, momentum=0.9), np.linspace(0.01, 0.08, 8)),
    "adam_lr": (lambda x: opt.adam(x), np.linspace(0.001, 0.008, 8)),
    "sgd_momentum": (lambda x: opt.sgd(0.05, momentum=x), np.linspace(0.1, 0.8, 8)),
    "sgd_nesterov_momentum": (lambda x: opt.sgd(0.05, momentum=x, nesterov=True), np.linspace(0.1, 0.8, 8)),
    "adam_b1": (lambda x: opt.adam(0.01, b1=x), np.linspace(0.1, 0.8, 8)),
    "adamw_weight_decay": (lambda x: opt.adamw(0.01, weight_decay=x), np.linspace(0.0, 0.7, 8)),
    "clip_max_norm": (lambda x: clipping.clip_by_global_norm(opt.sgd(0.1), x), np.linspace(0.5, 4.0, 8)),
}


@pytest.mark.parametrize("case", VMAP_CASES)
def test_vmap_over_hyperparameter_matches_single_runs(case):
    build, values = VMAP_CASES[case]
    rng = np.random.default_rng(5)
    params, grads = {"w": jnp.asarray(rng.normal(size=(2, 3)))}, {"w": 2.0 * rng.normal(size=(2, 3))}
    state = some_state(build(values[0]), params, rng)
    batched = jax.vmap(lambda x: jitted_update(build(x), grads, state, params))(jnp.asarray(values))
    for i, value in enumerate(values):
        single = jitted_update(build(float(value)), grads, state, params)
        chex.assert_trees_all_close(jax.tree.map(operator.itemgetter(i), batched), single, rtol=1e-13, atol=1e-15)
    new_w = batched[0]["w"]
    assert not np.allclose(new_w[0], new_w[-1])  # the members really differ


@pytest.mark.parametrize("case", CASES)
def test_new_hyperparameter_values_do_not_recompile(case):
    traces = []

    @jax.jit
    def step(optimizer, grads, state, params):
        traces.append(1)
        return optimizer.update(grads, state, params)

    params, grads = {"w": jnp.array([[0.5, -1.0]])}, {"w": jnp.array([[2.0, 0.25]])}
    halved = {k: v / 2 for k, v in CASES[case][3].items() if isinstance(v, float)}
    first, second = make(case), make(case, **halved)  # every float hyperparameter changes
    out1, _ = step(first, grads, first.init(params), params)
    out2, _ = step(second, grads, second.init(params), params)
    assert step._cache_size() == 1 and len(traces) == 1
    assert not np.allclose(out1["w"], out2["w"])


def test_learning_rate_and_schedule_values_do_not_recompile():
    step = jax.jit(lambda o, g, s, p: o.update(g, s, p))
    params = {"w": jnp.ones(3)}
    for lr in [0.1, 0.2, 1, schedules.cosine_decay(0.1, 10), schedules.cosine_decay(0.3, 20, alpha=0.1)]:
        optimizer = opt.sgd(lr)
        step(optimizer, params, optimizer.init(params), params)
    assert step._cache_size() == 2  # one program for constant learning rates, one for cosine schedules


SCHEDULES = {
    "exponential": schedules.exponential_decay(0.1, 0.5, 2),
    "piecewise": schedules.piecewise_constant([2, 4], [0.1, 0.05, 0.01]),
    "warmup_cosine": schedules.warmup(schedules.cosine_decay(0.1, 5), 3),
    "python_function": lambda t: 0.1 / (1.0 + t),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_as_lr_is_used_at_step_count(name):
    schedule = SCHEDULES[name]
    optimizer = opt.sgd(schedule)
    params, grads = {"w": jnp.zeros(3)}, {"w": jnp.array([1.0, -2.0, 0.5])}
    state, used = optimizer.init(params), set()
    for t in range(10):
        lr_t = float(schedule(t))
        used.add(lr_t)
        assert float(optimizer.learning_rate(state)) == pytest.approx(lr_t, rel=1e-14)
        new, state = jitted_update(optimizer, grads, state, params)
        np.testing.assert_allclose(new["w"] - params["w"], -lr_t * grads["w"], rtol=1e-12)
        params = new
    assert len(used) >= 3  # the schedule really varies over these steps


def test_state_structure_does_not_depend_on_values():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    same = [
        (opt.sgd(0.1), opt.sgd(0.1, momentum=0.9, nesterov=True)),
        (opt.rmsprop(0.1), opt.rmsprop(0.1, momentum=0.9, centered=True)),
        (opt.adagrad(0.1), opt.adagrad(0.1, initial_accumulator=0.1)),
        (opt.adam(0.1), opt.adamw(0.1, weight_decay=0.0)),
    ]
    for a, b in same:
        assert jax.tree.structure(a.init(params)) == jax.tree.structure(b.init(params))


# ----------------------------------------------------------------------------- construction and bad input

FACTORIES = {
    opt.SGD: opt.sgd,
    opt.RMSProp: opt.rmsprop,
    opt.AdaGrad: opt.adagrad,
    opt.Adam: opt.adam,
    opt.AdamW: opt.adamw,
}


def test_public_names():
    assert (fnn.sgd, fnn.rmsprop, fnn.adagrad, fnn.adam, fnn.adamw) == tuple(FACTORIES.values())
    assert all(name is cls for cls, name in FACTORIES.items())  # the lowercase names are the classes
    assert fnn.Optimizer is opt.Optimizer and all(issubclass(cls, opt.Optimizer) for cls in FACTORIES)


@pytest.mark.parametrize("cls", FACTORIES, ids=lambda cls: cls.__name__)
def test_class_built_directly_equals_the_factorys(cls):
    direct, made = cls(1), FACTORIES[cls](1)  # an int lr, and every default
    assert direct == made and type(made) is cls
    assert isinstance(direct.lr, schedules.Constant) and type(direct.lr.value) is float
    assert all(type(leaf) is float for leaf in jax.tree.leaves(direct))  # Python numbers stored as floats


# (class, keyword arguments, the argument the error must name); each is tried on the class and on its factory
BAD_ARGUMENTS = [
    (opt.SGD, dict(lr=-0.1), "lr"),
    (opt.SGD, dict(lr=float("nan")), "lr"),
    (opt.SGD, dict(lr=jnp.array([0.1, -0.1])), "lr"),
    (opt.SGD, dict(lr=0.1, momentum=1.0), "momentum"),
    (opt.SGD, dict(lr=0.1, momentum=-0.5), "momentum"),
    (opt.SGD, dict(lr=0.1, nesterov=True), "nesterov"),
    (opt.RMSProp, dict(lr=-1.0), "lr"),
    (opt.RMSProp, dict(lr=0.1, decay=1.0), "decay"),
    (opt.RMSProp, dict(lr=0.1, eps=0.0), "eps"),
    (opt.RMSProp, dict(lr=0.1, momentum=2.0), "momentum"),
    (opt.AdaGrad, dict(lr=-1.0), "lr"),
    (opt.AdaGrad, dict(lr=0.1, initial_accumulator=-0.1), "initial_accumulator"),
    (opt.AdaGrad, dict(lr=0.1, eps=-1e-10), "eps"),
    (opt.Adam, dict(lr=-0.1), "lr"),
    (opt.Adam, dict(lr=0.1, b1=1.0), "b1"),
    (opt.Adam, dict(lr=0.1, b2=-0.1), "b2"),
    (opt.Adam, dict(lr=0.1, eps=0.0), "eps"),
    (opt.AdamW, dict(lr=-0.1), "lr"),
    (opt.AdamW, dict(lr=0.1, b1=1.5), "b1"),
    (opt.AdamW, dict(lr=0.1, weight_decay=-1e-2), "weight_decay"),
]


@pytest.mark.parametrize("build", ["class", "factory"])
@pytest.mark.parametrize("cls, kwargs, name", BAD_ARGUMENTS, ids=[f"{c.__name__}-{n}" for c, _, n in BAD_ARGUMENTS])
def test_bad_hyperparameter_names_argument(cls, kwargs, name, build):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        (cls if build == "class" else FACTORIES[cls])(**kwargs)


# every numeric argument of every optimizer, and the static flags
NUMERIC = {
    opt.SGD: ["lr", "momentum"],
    opt.RMSProp: ["lr", "decay", "eps", "momentum"],
    opt.AdaGrad: ["lr", "initial_accumulator", "eps"],
    opt.Adam: ["lr", "b1", "b2", "eps"],
    opt.AdamW: ["lr", "b1", "b2", "eps", "weight_decay"],
}
FLAGS = [(opt.SGD, "nesterov"), (opt.RMSProp, "centered")]
BAD_KINDS = ["0.1", None, True, np.bool_(False), np.array([True]), 1 + 0j, [0.1], object()]
TYPE_CASES = [(cls, name, bad) for cls, names in NUMERIC.items() for name in names for bad in BAD_KINDS]


@pytest.mark.parametrize("build", ["class", "factory"])
@pytest.mark.parametrize(
    "cls, name, bad", TYPE_CASES, ids=[f"{c.__name__}-{n}-{type(b).__name__}" for c, n, b in TYPE_CASES]
)
def test_non_numeric_hyperparameter_is_refused(cls, name, bad, build):
    kinds = "a number, a numeric array or a schedule" if name == "lr" else "a number or a numeric array"
    message = f"{name} must be {kinds}; got {bad!r} ({type(bad).__name__}"
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        (cls if build == "class" else FACTORIES[cls])(**{"lr": 0.1, name: bad})


@pytest.mark.parametrize("build", ["class", "factory"])
@pytest.mark.parametrize("cls, name", FLAGS)
@pytest.mark.parametrize("bad", ["yes", None, 1, np.array(True)], ids=["str", "None", "int", "array"])
def test_non_bool_flag_is_refused(cls, name, bad, build):
    with pytest.raises(ValueError, match=rf"^{name} must be a bool"):
        (cls if build == "class" else FACTORIES[cls])(0.1, momentum=0.5, **{name: bad})


def test_the_issues_examples_are_refused_with_the_documented_message():
    with pytest.raises(
        ValueError, match=re.escape("lr must be a number, a numeric array or a schedule; got '0.1' (str)")
    ):
        fnn.sgd("0.1")
    with pytest.raises(
        ValueError, match=re.escape("lr must be a number, a numeric array or a schedule; got None (NoneType)")
    ):
        fnn.adam(None)


@pytest.mark.parametrize(
    "lr",
    [1, 0.5, np.float32(0.5), np.int64(2), np.array(0.5), jnp.asarray(0.5), schedules.constant(0.5), lambda step: 0.5],
    ids=["int", "float", "np.float32", "np.int64", "np.array", "jax.Array", "schedule", "callable"],
)
def test_accepted_learning_rates(lr):
    optimizer = opt.sgd(lr)
    assert isinstance(optimizer.lr, schedules.Schedule)
    assert float(optimizer.learning_rate(optimizer.init({"w": jnp.zeros(2)}))) == float(lr(0) if callable(lr) else lr)


def test_values_are_not_read_when_traced_nor_checked_when_jax_rebuilds():
    # built under vmap: the lr is a tracer, negative for one member, and only its kind is checked
    lrs = jax.vmap(lambda lr: opt.adam(lr).learning_rate(opt.adam(lr).init({"w": jnp.zeros(2)})))(
        jnp.array([-0.1, 0.2])
    )
    np.testing.assert_allclose(lrs, [-0.1, 0.2])
    # JAX rebuilds an optimizer without __init__: tree.map may put any value in its leaves
    rebuilt = jax.tree.map(lambda leaf: -1.0, opt.sgd(0.1, momentum=0.5))
    assert isinstance(rebuilt, opt.SGD) and rebuilt.momentum == -1.0 and float(rebuilt.lr(0)) == -1.0
    with pytest.raises(ValueError, match="momentum"):
        opt.SGD(0.1, -1.0)  # while a user's construction is checked


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", CASES)
def test_mismatched_trees_name_grads_and_params(case, jit):
    optimizer = make(case)
    update = jitted_update if jit else type(optimizer).update
    params = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
    state = optimizer.init(params)
    for grads in [{"a": jnp.zeros(3)}, {"a": jnp.zeros(3), "b": jnp.zeros(3)}, [jnp.zeros(3), jnp.zeros(2)]]:
        with pytest.raises(ValueError, match="grads.*params"):
            update(optimizer, grads, state, params)
    other_state = optimizer.init({"a": jnp.zeros(3)})
    with pytest.raises(ValueError, match="state"):
        update(optimizer, params, other_state, params)


def test_state_of_another_optimizer_is_refused():
    params = {"w": jnp.zeros(2)}
    with pytest.raises(ValueError, match="state must be the AdamState"):
        opt.adam(0.1).update(params, opt.sgd(0.1).init(params), params)


@pytest.mark.parametrize("case", CASES)
def test_float64_grads_do_not_promote_float32_params(case):
    optimizer = make(case)
    params = {"w": jnp.ones((2, 2), jnp.float32)}
    state = optimizer.init(params)
    new, state = optimizer.update({"w": jnp.full((2, 2), 0.5, jnp.float64)}, state, params)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((new, state[1:])))
    assert state.count.dtype == jnp.int32
