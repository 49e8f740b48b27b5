"""The op taxonomy: standard ONNX op types grouped by what they are (Zennit's `types.py`).

Each group is defined once here, with what makes an op belong to it; the rule sets (LRP,
DeepLIFT, Chefer's), the layer and attention finders, the stem, the gradient driver and the
graph builder compose these groups (unions, differences) instead of listing op types
themselves. This module imports nothing from onnxplain, so any module can import it.
Op types are of the standard domain unless a group says otherwise (CONTRIB_OPS).
"""

from __future__ import annotations

# ---- layers with weights ------------------------------------------------------------------------
CONV = frozenset({"Conv"})  # a kernel slid over the spatial axes
TRANSPOSED_CONV = frozenset({"ConvTranspose"})  # the adjoint of a Conv: upsamples
CONVOLUTIONS = CONV | TRANSPOSED_CONV
DENSE = frozenset({"Gemm", "MatMul"})  # a matrix product: every output reads every feature
WEIGHTED = CONVOLUTIONS | DENSE  # linear in the input, with a weight input (usually constant)
EINSUM = frozenset({"Einsum"})  # a product of its inputs, linear in each
RECURRENT = frozenset({"LSTM", "GRU", "RNN"})  # cells whose gates multiply states inside

# ---- normalisations -----------------------------------------------------------------------------
BATCH_NORMS = frozenset({"BatchNormalization"})  # at inference, a per-channel affine map
# Normalise each position by statistics of its own features (the transformer norms).
FEATURE_NORMS = frozenset({"LayerNormalization", "RMSNormalization"})
# ONNX Runtime's RMS norm, registered in the standard domain by ONNX Runtime itself.
CONTRIB_FEATURE_NORMS = frozenset({"SimplifiedLayerNormalization"})
# Normalise by statistics of groups of channels of one sample, over the spatial axes.
GROUP_NORMS = frozenset({"GroupNormalization", "InstanceNormalization"})

# ---- activations: y = f(x) elementwise ----------------------------------------------------------
# Non-decreasing and continuous, with no breakpoints set by parameters.
MONOTONE_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu",
                                  "Sigmoid", "Tanh", "Softplus", "Softsign"})
# Piecewise, with breakpoints set by parameters: flat outside bounds, or a jump.
THRESHOLD_ACTIVATIONS = frozenset({"HardSigmoid", "Clip", "ThresholdedRelu"})
# x times a gate in [0, 1]: they dip below zero for negative x.
GATED_ACTIVATIONS = frozenset({"Gelu", "Mish", "HardSwish"})
ACTIVATIONS = MONOTONE_ACTIVATIONS | THRESHOLD_ACTIVATIONS | GATED_ACTIVATIONS
# Activations with a tensor parameter beside x (a slope, bounds): not strictly unary.
PARAMETERISED_ACTIVATIONS = frozenset({"PRelu", "Clip"})
UNARY_ACTIVATIONS = ACTIVATIONS - PARAMETERISED_ACTIVATIONS
# The functions gates are written with when an activation is exported as primitive ops (GELU's
# tanh form, SiLU, HardSwish, Mish).
GATE_FUNCTIONS = frozenset({"Sigmoid", "HardSigmoid", "Tanh", "Softplus"})
# The arithmetic a tanh-GELU is written out with around its Tanh (0.5 x (1 + tanh(c (x +
# 0.044715 x^3)))): what ONNX Runtime's FastGeluFusion matches.
TANH_GELU_ARITHMETIC = frozenset({"Mul", "Add", "Pow", "Div", "Sqrt"})
# Bound logits: a softcap c * tanh(x / c) (Gemma 2) or a clamp.
LOGIT_CAPS = frozenset({"Tanh", "Clip"})
SOFTMAXES = frozenset({"Softmax", "LogSoftmax"})  # normalise exponentials along one axis
# Results >= 0 whatever the input.
NON_NEGATIVE_RESULTS = frozenset({"Relu", "Sigmoid", "HardSigmoid", "Softmax", "Softplus", "Abs",
                                  "Exp"})

# ---- elementwise arithmetic ---------------------------------------------------------------------
SUMS = frozenset({"Add", "Sub"})
SCALINGS = frozenset({"Mul", "Div"})
ARITHMETIC = SUMS | SCALINGS  # binary, broadcasting
NARY_SUMS = frozenset({"Sum", "Mean"})  # elementwise sum or mean of any number of inputs
EXTREMA = frozenset({"Min", "Max"})  # elementwise extremum of any number of inputs
POWERS = frozenset({"Pow"})
MODULO = frozenset({"Mod"})
NEGATION = frozenset({"Neg"})
ERF = frozenset({"Erf"})
# Elementwise math functions of one input that are not activations.
UNARY_MATH = NEGATION | ERF | frozenset({"Abs", "Exp", "Log", "Sqrt", "Reciprocal"})
PERIODIC = frozenset({"Sin", "Cos"})  # rotary embeddings' tables, usually of positions only
SOFTSIGN = frozenset({"Softsign"})  # x / (1 + |x|)
# Piecewise linear through the origin: f(x) / x equals f'(x) wherever both are defined.
SLOPE_IS_RATIO = frozenset({"Relu", "LeakyRelu", "PRelu", "ThresholdedRelu", "Abs"})
# What computes the scale of a normalisation written out as primitive ops.
NORM_STATISTICS = POWERS | frozenset({"Sqrt", "Reciprocal", "ReduceL2"})

# ---- ops that move values unchanged -------------------------------------------------------------
IDENTITY = frozenset({"Identity"})
DROPOUT = frozenset({"Dropout"})  # the identity at inference (its mask output aside)
INFERENCE_IDENTITIES = IDENTITY | DROPOUT
RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})  # same values, same order
PERMUTATIONS = frozenset({"Transpose", "DepthToSpace", "SpaceToDepth"})  # each value once, moved
# Some of the input's values, chosen by position.
SELECTIONS = frozenset({"Slice", "Split", "Gather", "GatherElements", "GatherND"})
REPLICATIONS = frozenset({"Expand", "Tile"})  # each value copied to several places
CONCATS = frozenset({"Concat"})
# Every output value is one input value (or a copy of one), chosen by position alone.
VALUE_MOVERS = IDENTITY | RESHAPES | PERMUTATIONS | SELECTIONS | REPLICATIONS | CONCATS
PADS = frozenset({"Pad"})  # the input's values, with constants or copies around them
WHERE = frozenset({"Where"})  # each value from one of two inputs, chosen by a condition
SCATTERS = frozenset({"ScatterElements", "ScatterND"})  # values written into a copy of data
CASTS = frozenset({"Cast", "CastLike"})
QUANTIZERS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})
DEQUANTIZERS = frozenset({"DequantizeLinear"})

# ---- pools and reductions -----------------------------------------------------------------------
# One input; each output is one input value, chosen by its value.
MAX_POOLS = frozenset({"MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin"})
TOPK = frozenset({"TopK"})
ORDER_SELECTIONS = MAX_POOLS | EXTREMA | TOPK  # outputs are input values chosen by value
AVERAGE_POOLS = frozenset({"AveragePool", "GlobalAveragePool"})
LINEAR_REDUCTIONS = frozenset({"ReduceMean", "ReduceSum"})
CUMULATIVE = frozenset({"CumSum"})
RESAMPLES = frozenset({"Resize", "Upsample"})  # interpolation: fixed weights of input values
# Linear in one input with fixed weights: sums, means and interpolations over windows or axes.
POOLED_SUMS = AVERAGE_POOLS | LINEAR_REDUCTIONS | CUMULATIVE | RESAMPLES

# ---- ops without values to differentiate --------------------------------------------------------
COMPARISONS = frozenset({"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"})
LOGICAL = frozenset({"Not", "And", "Or", "Xor"})
FLOAT_TESTS = frozenset({"IsNaN", "IsInf"})
BOOLEAN_RESULTS = COMPARISONS | LOGICAL | FLOAT_TESTS  # their outputs are bool
SHAPE_READERS = frozenset({"Shape", "Size"})  # depend on a tensor's shape, never its values
INDEX_RESULTS = frozenset({"NonZero", "ArgMax", "ArgMin"})  # positions, as int64
INT64_RESULTS = SHAPE_READERS | INDEX_RESULTS
# Values set by attributes or shapes alone.
GENERATORS = frozenset({"Constant", "ConstantOfShape", "Range", "EyeLike"})
# Constant almost everywhere in their float input: their derivative is 0 where it exists.
PIECEWISE_CONSTANT = frozenset({"Floor", "Ceil", "Round", "Sign", "Hardmax"})
BITWISE = frozenset({"BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot"})
RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Bernoulli", "Multinomial"})  # not a function of their inputs
# Outputs that carry no gradient: integer, boolean or shape results, generated or random
# values, piecewise constant ones.
NO_GRADIENT = (SHAPE_READERS | BOOLEAN_RESULTS | INDEX_RESULTS | GENERATORS
               | PIECEWISE_CONSTANT | RANDOM | BITWISE)

CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})  # run subgraphs held in their attributes

# ---- ONNX Runtime contrib ops (domain com.microsoft) --------------------------------------------
# Fused attention that no canonicalisation decomposes (canonical/ms_attention.py turns
# Attention, MultiHeadAttention and GroupQueryAttention into standard ops on load): opaque, with
# no probability tensor and no gradient.
FUSED_ATTENTION = frozenset({
    "PackedAttention", "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention",
    "DecoderMaskedSelfAttention", "SparseAttention", "PagedAttention"})
# Every contrib op type named in a group above (none is in onnx.defs).
CONTRIB_OPS = FUSED_ATTENTION | CONTRIB_FEATURE_NORMS

# ---- onnxplain's own operators (ops/) -----------------------------------------------------------
# Model-local functions (EpsilonSoftmax) with backward rules of their own: loading keeps them
# whole instead of inlining their bodies.
ONNXPLAIN_DOMAIN = "onnxplain"
