"""Hand-worked checks for tether.algos.kl (plus package-level API checks)."""

import ast
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import tether.algos as algos
from tether.algos.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_estimators_by_hand():
    """Token 0: logp = -1, logq = -2 -> log r = logq - logp = -1
        k1 = 1, k2 = 0.5 * 1^2 = 0.5, k3 = (e^-1 - 1) - (-1) = e^-1 = 0.36787944
    Token 1: logp = -2, logq = -1 -> log r = +1
        k1 = -1, k2 = 0.5, k3 = (e - 1) - 1 = e - 2 = 0.71828183
    Token 2: logp = logq -> all 0."""
    logp = t([[-1.0, -2.0, -0.3]])
    logq = t([[-2.0, -1.0, -0.3]])
    assert_close(kl_k1(logp, logq), t([[1.0, -1.0, 0.0]]))
    assert_close(kl_k2(logp, logq), t([[0.5, 0.5, 0.0]]))
    assert_close(kl_k3(logp, logq), t([[math.exp(-1), math.e - 2, 0.0]]))


def test_k3_non_negative_and_k2_non_negative():
    logp = torch.randn(4, 50) * 3
    logq = torch.randn(4, 50) * 3
    assert (kl_k3(logp, logq) >= 0).all()
    assert (kl_k2(logp, logq) >= 0).all()


def test_k1_k3_unbiased_exact_expectation():
    """p = (0.5, 0.5), q = (0.25, 0.75). True KL[p||q] = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75)
    = 0.5 (ln 2 + ln 2/3) = 0.5 ln(4/3) = 0.14384104.
    E_p[k] is computed exactly as sum_x p(x) k(x) (no sampling): k1 and k3 hit it, k2 does not:
    E_p[k2] = 0.5 * (0.5 (ln 2)^2 + 0.5 (ln 2/3)^2) = 0.5 * (0.240227 + 0.082201) = 0.161214."""
    p, q = t([0.5, 0.5]), t([0.25, 0.75])
    kl_true = 0.5 * math.log(4 / 3)
    assert (p * kl_k1(p.log(), q.log())).sum().item() == pytest.approx(kl_true, rel=1e-12)
    assert (p * kl_k3(p.log(), q.log())).sum().item() == pytest.approx(kl_true, rel=1e-12)
    e_k2 = 0.5 * (0.5 * math.log(2) ** 2 + 0.5 * math.log(2 / 3) ** 2)
    assert (p * kl_k2(p.log(), q.log())).sum().item() == pytest.approx(e_k2, rel=1e-12)
    assert e_k2 == pytest.approx(0.161214, abs=1e-6)


def test_k3_precise_for_tiny_differences():
    """log r = 1e-8: k3 = (r - 1) - log r ~ (log r)^2 / 2 = 5e-17, which naive exp(x)-1 loses in float32."""
    logp = torch.tensor([0.0], dtype=torch.float32)
    logq = torch.tensor([1e-4], dtype=torch.float32)
    # (log r)^2/2 = 5e-9 (+ (log r)^3/6 ~ 1.7e-13)
    assert kl_k3(logp, logq).item() == pytest.approx(5e-9, rel=1e-3)


def test_adaptive_controller_by_hand():
    """target 6, horizon 10000, K_beta 1, n_steps 1000:
    KL 9   -> e = clip(9/6 - 1 = 0.5) = 0.2;   beta = 0.1 * (1 + 0.2 * 0.1) = 0.102
    KL 3   -> e = clip(-0.5) = -0.2;          beta = 0.102 * (1 - 0.02) = 0.09996
    KL 6.6 -> e = 0.1 (not clipped);         beta = 0.09996 * (1 + 0.01) = 0.1009596
    KL 6   -> e = 0;                          beta unchanged."""
    c = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    assert c.update(9.0, n_steps=1000) == pytest.approx(0.102)
    assert c.update(torch.tensor(3.0), n_steps=1000) == pytest.approx(0.09996)
    assert c.update(6.6, n_steps=1000) == pytest.approx(0.1009596)
    assert c.update(6.0, n_steps=1000) == pytest.approx(0.1009596)
    assert c.value == pytest.approx(0.1009596)


def test_adaptive_controller_k_beta():
    """Paper setting K_beta = 0.1, n_steps = horizon: KL 12 -> e = clip(1) = 0.2,
    beta = 0.05 * (1 + 0.1 * 0.2 * 1) = 0.051."""
    c = AdaptiveKLController(value=0.05, target=6.0, horizon=256, k_beta=0.1)
    assert c.update(12.0, n_steps=256) == pytest.approx(0.051)


def test_adaptive_controller_state_dict_roundtrip():
    c = AdaptiveKLController(value=0.2, target=4.0, horizon=500, k_beta=0.5)
    c.update(8.0, n_steps=100)
    state = c.state_dict()
    assert state == {"value": c.value, "target": 4.0, "horizon": 500, "k_beta": 0.5}
    d = AdaptiveKLController(value=1.0, target=1.0, horizon=1)
    d.load_state_dict(state)
    assert d == c
    assert d.update(2.0, n_steps=10) == c.update(2.0, n_steps=10)
    with pytest.raises(KeyError):
        d.load_state_dict({"value": 0.1})


def test_adaptive_controller_validation():
    with pytest.raises(ValueError):
        AdaptiveKLController(value=0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError):
        AdaptiveKLController(value=0.1, target=1.0, horizon=0)
    with pytest.raises(ValueError):
        AdaptiveKLController(value=0.1, target=1.0, horizon=10).update(float("nan"), 1)


def test_fixed_controller():
    c = FixedKLController(value=0.05)
    assert c.update(100.0, n_steps=64) == 0.05
    assert c.value == 0.05
    e = FixedKLController(value=1.0)
    e.load_state_dict(c.state_dict())
    assert e.value == 0.05 and e.state_dict() == {"value": 0.05}


# ------------------------------------------------------------- packaging


def test_public_api_reexported():
    for name in algos.__all__:
        assert callable(getattr(algos, name)), name
    assert algos.kl_k3 is kl_k3 and len(algos.__all__) == 20


def test_algos_imports_only_torch_math_dataclasses():
    allowed = {"torch", "math", "dataclasses"}
    for path in Path(algos.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"
