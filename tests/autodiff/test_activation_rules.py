import numpy as np
import pytest

from .cases import Const, OpCase, apart, r
from .gradcheck import check_case

CASES = [
    OpCase("relu", "Relu", [apart(3, 4)]),
    OpCase("leaky-relu", "LeakyRelu", [apart(3, 4)], {"alpha": 0.2}),
    OpCase("prelu-channel", "PRelu", [apart(2, 3, 2, 2), r(3, 1, 1)]),
    OpCase("prelu-const-slope", "PRelu", [apart(2, 3, 4), Const(np.array([0.1, 0.2, 0.3, 0.4]))]),
    OpCase("prelu-opset9", "PRelu", [apart(2, 3, 2), Const(r(3, 1))], opset=9),
    OpCase("thresholded-relu", "ThresholdedRelu", [apart(3, 4)], {"alpha": 0.1}),
    OpCase("elu", "Elu", [apart(3, 4)], {"alpha": 0.7}),
    OpCase("selu", "Selu", [apart(3, 4)]),
    OpCase("celu", "Celu", [apart(3, 4)], {"alpha": 1.5}, float32_only=True),
    OpCase("sigmoid", "Sigmoid", [r(3, 4)]),
    OpCase("tanh", "Tanh", [r(3, 4)]),
    OpCase("softplus", "Softplus", [r(3, 4)]),
    OpCase("softsign", "Softsign", [apart(3, 4)]),
    OpCase("hard-sigmoid", "HardSigmoid", [apart(3, 4) * 4], {"alpha": 0.3, "beta": 0.4}),
    OpCase("hard-swish", "HardSwish", [apart(4, 5) * 3], opset=14),
    OpCase("gelu", "Gelu", [r(3, 4)], opset=20),
    OpCase("gelu-tanh", "Gelu", [r(3, 4)], {"approximate": "tanh"}, opset=20),
    OpCase("mish", "Mish", [r(3, 4)], opset=18),
]


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_rule_matches_finite_differences(case, symbolic):
    check_case(case, symbolic)
