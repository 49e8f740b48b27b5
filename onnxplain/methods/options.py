"""Method options declared once: name, default, what values it accepts, its range and one line
of help. The Python API, `-O key=value`, export (and its metadata), `onnxplain methods` and
the README's method table all read these declarations, and `Option.check` is the one place
a value is validated: type, finiteness, range and choices, with one-line errors that never
print a large value."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .._text import brief, is_integer_text
from ..errors import InputError
from ..export.random import WORD
from ..runtime.budget import MAX_RUNS

# What an option accepts besides None (`none=True`):
#   bool   true/false (also 1/0)        int    an integer       float  a finite number
#   choice one of `choices`             text   free text, e.g. a tensor name (`what` says)
#   pair   one or two positive integers ("h,w" on the command line)
#   array  a numeric array (a file with -O key=@file.npy)
#   mapping a dict of numeric arrays by input name
#   names  names of tensors or nodes: a list of strings, or text separated by commas
KINDS = ("bool", "int", "float", "choice", "text", "pair", "array", "mapping", "names")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Option:
    """One option of a method. `low`/`high` bound numbers (`open_low`/`open_high`: the bound
    itself is excluded); `what` names free text ("a tensor or node name")."""

    name: str
    default: object
    help: str
    kinds: tuple[str, ...]
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    none: bool = False
    what: str = "text"

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"option {self.name}: unknown kinds {sorted(unknown)}")

    def expects(self) -> str:
        """What the option accepts, in words: 'an int >= 1', 'one of zeros, blur or a float'."""
        parts = [_KIND_WORDS[kind](self) for kind in self.kinds]
        if self.none:
            parts.append("None")
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]

    def range_text(self) -> str:
        """' >= 1', ' in (0, 1]', ' from 0 to 2**128 - 1' or ''."""
        low, high = self.low, self.high
        if low is not None and high is not None:
            if "int" in self.kinds and not (self.open_low or self.open_high):
                return f" from {_bound(low)} to {_bound(high)}"
            return (f" in {'(' if self.open_low else '['}{_bound(low)}, "
                    f"{_bound(high)}{')' if self.open_high else ']'}")
        if low is not None:
            return f" {'>' if self.open_low else '>='} {_bound(low)}"
        if high is not None:
            return f" {'<' if self.open_high else '<='} {_bound(high)}"
        return ""

    def check(self, method: str, value: object) -> object:
        """`value` (from the API, or text from the CLI) as the option takes it, else a
        one-line InputError naming the method, the option, what it expects and what came."""
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if value is None and self.none:
            return None
        if isinstance(value, str):
            return self._from_text(method, value)
        return self._from_value(method, value)

    def _from_value(self, method: str, value: object) -> object:
        """An API value that is not text."""
        if isinstance(value, bool | np.bool_):
            if "bool" in self.kinds:
                return bool(value)
            raise self._error(method, value)
        if isinstance(value, int | float | np.integer | np.floating):
            if "pair" in self.kinds:
                return self._pair(method, [value], value)
            return self._number(method, value)
        if isinstance(value, Mapping):
            if "mapping" in self.kinds:
                return {key: self._array(method, item) for key, item in value.items()}
            raise self._error(method, value)
        if isinstance(value, list | tuple) and "names" in self.kinds and value and all(
                isinstance(item, str) and item.strip() for item in value):
            return list(value)
        if isinstance(value, np.ndarray | list | tuple):
            if "pair" in self.kinds:
                return self._pair(method, value, value)
            if "array" in self.kinds:
                return self._array(method, value)
        raise self._error(method, value)

    def _from_text(self, method: str, value: str) -> object:
        text = value.strip()
        lower = text.lower()
        if "choice" in self.kinds:
            for choice in self.choices:
                if lower == choice.lower():
                    return choice
        if self.none and lower == "none":
            return None
        if "bool" in self.kinds and lower in _TRUE + _FALSE:
            return lower in _TRUE
        if "pair" in self.kinds and text:
            parts = text.replace("x", ",").split(",")
            if all(is_integer_text(part.strip()) for part in parts):
                return self._pair(method, [int(part) for part in parts], value)
        if {"int", "float"} & set(self.kinds):
            number = _parse_number(text)
            if number is not None:
                return self._number(method, number, value)
        if {"text", "names"} & set(self.kinds) and text:
            return value
        raise self._error(method, value)

    def _number(self, method: str, value, given: object = None) -> int | float:
        given = value if given is None else given
        if "int" in self.kinds and _integral(value):
            number: int | float = int(value)
        elif "float" in self.kinds:
            try:
                number = float(value)
            except OverflowError:  # an int past float's range
                number = math.inf
            if not math.isfinite(number):
                raise InputError(f"option '{self.name}' of method '{method}' must be a finite "
                                 f"number, got {brief(given)}")
        elif "bool" in self.kinds and value in (0, 1):
            return bool(value)
        else:
            raise self._error(method, given)
        if not self._in_range(number):
            raise InputError(f"option '{self.name}' of method '{method}' must be "
                             f"{self._number_words()}{self.range_text()}, got {brief(given)}")
        if isinstance(number, int) and self.high is None and not -2**63 <= number < 2**63:
            # Counts, sizes and indices go to numpy as int64.
            raise InputError(f"option '{self.name}' of method '{method}' must be "
                             f"{self._number_words()}{self.range_text()} that fits in 64 "
                             f"bits, got {brief(given)}")
        return number

    def _number_words(self) -> str:
        return "an integer" if "float" not in self.kinds else "a finite number"

    def _in_range(self, number: float) -> bool:
        low, high = self.low, self.high
        if low is not None and (number < low or (self.open_low and number == low)):
            return False
        return high is None or not (number > high or (self.open_high and number == high))

    def _pair(self, method: str, value, given: object) -> int | tuple[int, int]:
        items = list(value) if len(value) in (1, 2) else []
        if not items or not all(is_count(v) for v in items):
            raise self._error(method, given)
        ints = tuple(int(v) for v in items)
        return ints[0] if len(ints) == 1 else ints

    def _array(self, method: str, value) -> np.ndarray:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):  # ragged lists
            raise self._error(method, value) from None
        if array.dtype.kind not in "biuf" or array.size == 0:
            raise self._error(method, value)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InputError(f"option '{self.name}' of method '{method}' must hold finite "
                             f"numbers, got {brief(value)} with NaN or infinite values")
        return array

    def _error(self, method: str, value: object) -> InputError:
        return InputError(f"option '{self.name}' of method '{method}' expects "
                          f"{self.expects()}, got {brief(value)}")


def _number_phrase(option: Option, kind: str) -> str:
    words = {"int": "an int", "float": "a float"}[kind]
    # The range is said once, on the last number kind named.
    last = [k for k in option.kinds if k in ("int", "float")][-1]
    return words + (option.range_text() if kind == last else "")


_KIND_WORDS = {
    "bool": lambda o: "a bool",
    "int": lambda o: _number_phrase(o, "int"),
    "float": lambda o: _number_phrase(o, "float"),
    "choice": lambda o: "one of " + ", ".join(o.choices),
    "text": lambda o: o.what,
    "pair": lambda o: "one or two positive integers ('h,w')",
    "array": lambda o: "an array",
    "mapping": lambda o: "a dict of arrays by input name",
    "names": lambda o: "names separated by commas (or a list of them)",
}


def _bound(value: float) -> str:
    """A bound as people write it: 2**128 - 1 rather than 39 digits."""
    if isinstance(value, int) and value > 2**32:
        for offset, text in ((0, ""), (1, " - 1")):
            power = (value + offset).bit_length() - 1
            if value + offset == 2**power:
                return f"2**{power}{text}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def is_count(value) -> bool:
    """A positive integer (not a bool)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1


def _integral(value) -> bool:
    if isinstance(value, int | np.integer):
        return True
    return bool(np.isfinite(value)) and float(value).is_integer()


def _parse_number(text: str) -> int | float | None:
    """An int for integer text, else a float (nan and inf included), else None."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


# Declarations several methods share ---------------------------------------------------------


def flag(name: str, default: bool, help: str) -> Option:
    return Option(name, default, help, ("bool",))


def integer(name: str, default: int | None, help: str, low: int | None = None,
            high: int | None = None, none: bool = False) -> Option:
    return Option(name, default, help, ("int",), low=low, high=high, none=none)


def number(name: str, default: float, help: str, low: float | None = None,
           high: float | None = None, open_low: bool = False, open_high: bool = False
           ) -> Option:
    return Option(name, default, help, ("float",), low=low, high=high, open_low=open_low,
                  open_high=open_high)


def choice(name: str, default: str, choices: Sequence[str], help: str) -> Option:
    return Option(name, default, help, ("choice",), tuple(choices))


def seed_option(help: str = "seed of the random draws (same seed, same result)",
                high: int = 2**128 - 1) -> Option:
    # numpy's generators take integers 0 .. 2**128 - 1, export.random's 0 .. 2**32 - 1.
    return integer("seed", 0, help, low=0, high=high)


def layer_option(help: str = "layer tensor or node name (default: the last spatial conv "
                             "block, as `onnxplain inspect` lists)") -> Option:
    return Option("layer", None, help, ("text",), none=True, what="a tensor or node name")


def upsample_option(default: str = "bilinear") -> Option:
    from ..maps import MODES

    return choice("upsample", default, MODES, "how the map is resized to the input "
                  "('none': left at the layer's size)")


def input_option() -> Option:
    return Option("input", None, "the input perturbed (default: the first float input, else "
                  "the token ids)", ("text",), none=True, what="an input name")


def perturbation_baseline(help: str = "value perturbed elements take: a number or an array "
                                      "like one row") -> Option:
    return Option("baseline", 0.0, help, ("float", "array"))


def path_baseline(help: str = "the reference input (constant: baseline_value; an array "
                              "broadcasts to the input)") -> Option:
    from .baselines import NAMED

    return Option("baseline", "zeros", help, ("choice", "float", "array", "mapping"), NAMED)


def feature_options() -> tuple[Option, ...]:
    """How Kernel SHAP and LIME split an input row into features (onnxplain.features)."""
    from ..features import KINDS as FEATURE_KINDS

    kinds = tuple(kind for kind in FEATURE_KINDS if kind != "mask")
    return (Option("features", "auto", "feature kind (auto: grid for images, tokens for token "
                   "ids, else columns) or an integer mask: one row's, or one per row",
                   ("choice", "array"), kinds),
            integer("cell", 0, "grid cell size in pixels (0: an 8x8 grid over the image)",
                    low=0),
            integer("n_segments", 50, "superpixels wanted (features=superpixels)", low=1))


def attention_options() -> tuple[Option, ...]:
    """What every attention method reads: which layers, which query row, how maps resize."""
    return (Option("attention", None, "attention probability tensors or Softmax nodes "
                   "(default: every attention layer found)", ("names",), none=True),
            Option("query", "auto", "query row read: auto (the class token, the last token "
                   "of a causal model), mean (every row) or a token index", ("choice", "int"),
                   ("auto", "mean")),
            upsample_option())


def start_layer_option() -> Option:
    return integer("start_layer", 0, "first layer of the chain (negative: from the last)")


BASELINE_VALUE = number("baseline_value", 0.0, "the constant baseline's value "
                        "(baseline=constant)")
BLUR_SIGMA = number("blur_sigma", 5.0, "the blurred baseline's Gaussian sigma in pixels "
                    "(baseline=blur)", low=0)
# The uniform baseline draws from export.random's generator, which takes a word as its seed.
BASELINE_SEED = seed_option("seed of the uniform baseline", high=WORD - 1)


def n_steps_option(default: int = 50, auto: str | None = None,
                   what: str = "points on the path from the baseline to the input") -> Option:
    """A path method's step count; `auto`, where given, the word that lets the method pick
    its own (integrated_gradients)."""
    if auto is None:
        return integer("n_steps", default, what, low=1)
    return Option("n_steps", default, f"{what} ({auto}: 8 to 128 per row, to "
                  "delta_tolerance)", ("int", "choice"), (auto,), low=1)


def delta_tolerance(default: float) -> Option:
    return number("delta_tolerance", default, "warn when |convergence delta| exceeds this "
                  "share of |S(input) - S(baseline)|", low=0)


COALITION_BASELINE = perturbation_baseline(
    "value of absent features: a number, an array like one row, or background rows "
    "[B, ...] averaged over")

MAX_RUNS_OPTION = integer("max_runs", MAX_RUNS, "runs per input row allowed before the "
                          "method refuses (raise it to allow more work)", low=1)
