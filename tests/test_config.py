"""``bench.core.config.make_config`` on pydantic: the same resolved configs and one-line messages as
the hand-written coercer it replaced (kept below as the oracle), and typed nested configs."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union, get_args, get_origin

import pytest

from bench.core.config import config_dict, make_config
from bench.core.errors import BenchError, suggest

# --------------------------------------------------------------------------------------------
# The oracle: make_config/_coerce as they were before pydantic (verbatim, renamed).
# --------------------------------------------------------------------------------------------


def _old_coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise BenchError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _old_coerce(value, a, where)
            except BenchError as e:  # try the next member of the union
                errors.append(str(e))
        raise BenchError(errors[0] if errors else f"{where}: bad value {value!r}")
    if tp in (list, tuple, dict):
        origin = tp
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise BenchError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        inner = args[0] if args else Any
        out = [_old_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise BenchError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise BenchError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise BenchError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise BenchError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise BenchError(f"{where}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise BenchError(f"{where}: expected a number, got {value!r}") from None
        if math.isnan(out):
            raise BenchError(f"{where}: NaN is not allowed")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise BenchError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _old_make_config(cls: type, values: dict | None, where: str) -> Any:
    values = dict(values or {})
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        valid = ", ".join(sorted(fields)) or "(none)"
        raise BenchError(
            f"{where}: unknown config key '{unknown[0]}'{suggest(unknown[0], fields)}; valid keys: {valid}"
        )
    kwargs = {k: _old_coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        cfg = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise BenchError(f"{where}: {e}") from None
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
    return cfg


def _outcome(build, cls, values, where="x"):
    """('ok', repr of the resolved dict) or ('error', message): repr tells 3 from 3.0 and a tuple
    from a list, so equal outcomes mean equal cache keys."""
    try:
        return "ok", repr(config_dict(build(cls, values, where)))
    except BenchError as e:
        return "error", str(e)


# --------------------------------------------------------------------------------------------
# Every built-in Config resolves exactly as before
# --------------------------------------------------------------------------------------------


def _builtin_configs() -> list[tuple[str, type]]:
    from bench.core import registry
    from bench.lib.inversion import EvaluatorConfig
    from bench.lib.tasks import ProtocolConfig

    registry.load_all()
    out = []
    for kind in registry.KINDS:
        for name in registry.names(kind):
            cls = getattr(registry.get(kind, name), "Config", None)
            if cls is not None:
                out.append((f"{kind}.{name}", cls))
    return out + [("protocol", ProtocolConfig), ("evaluator", EvaluatorConfig)]


def _samples(tp: Any) -> list:
    """A handful of good and bad inputs for a field annotated ``tp`` (strings as from --set)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return [None] + [s for a in inner for s in _samples(a)]
    if origin is Literal:
        return [*args, "zzz", None, 1]
    if tp is int:
        return [3, "3", 3.0, -2, "-7", 0, "abc", 3.5, "3.5", True, None, [1], "1e3"]
    if tp is float:
        return [0.25, 2, "1e-3", "inf", "-inf", "abc", True, "nan", float("nan"), None, "", [1.0]]
    if tp is bool:
        return [True, False, "yes", "No", "TRUE", "false", "1", "0", "maybe", 1, 0, 2, None, 1.0]
    if tp is str:
        return ["abc", "", 5, None, ["a"], True]
    if tp is dict or origin is dict:
        return [{}, {"k": 1, "n": {"m": [1]}}, [1], "x", None]
    if tp is list or origin is list:
        return [[], [1, "2", 3.0], (4, 5), "1,2", [1, "two"], None, 3]
    return ["anything", 1, None]


def test_every_builtin_config_resolves_its_defaults_as_before():
    configs = _builtin_configs()
    assert len(configs) > 20 and any(n.startswith("attacks.") for n, _ in configs)
    for where, cls in configs:
        new, old = _outcome(make_config, cls, {}, where), _outcome(_old_make_config, cls, {}, where)
        assert new == old, where
        assert new[0] == "ok", new


def test_every_builtin_config_field_coerces_and_fails_as_before():
    compared = 0
    for where, cls in _builtin_configs():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):  # nested configs: the old coercer had none
                continue
            for value in _samples(hints[f.name]):
                values = {f.name: value}
                old = _outcome(_old_make_config, cls, values, where)
                new = _outcome(make_config, cls, values, where)
                assert new == old, (where, f.name, value)
                assert "\n" not in new[1]
                compared += 1
    assert compared > 1000


# --------------------------------------------------------------------------------------------
# The same on a config with every supported annotation, over a pool of raw values
# --------------------------------------------------------------------------------------------


@dataclass
class _All:
    flag: bool = False
    n: int = 1
    x: float = 0.5
    mode: Literal["a", "b"] = "a"
    opt: Optional[int] = None
    ids: list[int] = field(default_factory=list)
    pair: Optional[list[float]] = None
    name: str = "n"
    anything: Any = None
    mapping: dict = field(default_factory=dict)
    maybe_map: Optional[dict] = None
    pep604: int | None = None
    fixed: tuple[int, ...] = ()
    bare_list: list = field(default_factory=list)
    bare_tuple: tuple = ()
    either: Union[int, str] = 0
    num_or_auto: Union[float, Literal["auto"]] = "auto"
    word_or_flag: Union[Literal["off"], bool] = "off"
    opt_str: Optional[str] = None
    strs: list[str] = field(default_factory=list)
    nested_lists: list[list[int]] = field(default_factory=list)
    opt_mode: Optional[Literal["x", "y"]] = None


_POOL = [
    None, True, False, 0, 1, 2, -3, 3.0, 3.5, 0.25, float("inf"), float("nan"), 10 ** 30,
    "", "3", "-3", " 4 ", "3.5", "1e-3", "abc", "true", "No", "1", "0", "maybe", "inf", "nan", ".nan",
    "a", "b", "auto", "off", "x",
    [], [1, 2], ["1", 2.0], [1, "two"], [[1], ["2"]], [[1], "x"], (1, "2"), {}, {"k": 1}, {"a": [1]},
]


@pytest.mark.parametrize("key", [f.name for f in dataclasses.fields(_All)])
def test_every_annotation_matches_the_old_coercer_over_a_value_pool(key):
    for value in _POOL:
        old = _outcome(_old_make_config, _All, {key: value}, "t")
        new = _outcome(make_config, _All, {key: value}, "t")
        assert new == old, (key, value)


def test_mixed_inputs_report_the_first_bad_key_in_the_given_order():
    for values in ({"n": "x", "x": "y"}, {"x": "y", "n": "x"}, {"flag": 1, "ids": [1, "z"], "mode": "q"}):
        assert _outcome(make_config, _All, values, "t") == _outcome(_old_make_config, _All, values, "t")


def test_unknown_key_message_is_unchanged_and_checked_first():
    for values in ({"nn": "bad"}, {"n": "bad", "epochz": 1}, {"Mode": 1}):
        new = _outcome(make_config, _All, values, "m.x")
        assert new == _outcome(_old_make_config, _All, values, "m.x")
        assert "unknown config key" in new[1]
    assert _outcome(make_config, _All, {"nn": 1}, "m")[1].startswith(
        "m: unknown config key 'nn' (did you mean 'n'?); valid keys: anything, bare_list, ")


# --------------------------------------------------------------------------------------------
# Where pydantic and the old coercer part ways (each a deliberate choice)
# --------------------------------------------------------------------------------------------


def test_documented_differences_from_the_old_coercer():
    import numpy as np

    # an integral number spelled as a decimal string is an integer now, like 3.0 always was
    assert make_config(_All, {"n": "3.0"}, "t").n == 3
    with pytest.raises(BenchError, match="t.n: expected an integer"):
        _old_make_config(_All, {"n": "3.0"}, "t")
    # numpy integers are integers (the coercer rejected anything that was not an int subclass)
    got = make_config(_All, {"n": np.int64(4), "x": np.float32(0.5)}, "t")
    assert (got.n, got.x) == (4, 0.5) and type(got.n) is int and type(got.x) is float
    # a float too large to represent is a one-line error, not an OverflowError
    with pytest.raises(BenchError, match="t.x: expected a number"):
        make_config(_All, {"x": 10 ** 400}, "t")
    # a missing required key names the key in our own words
    with pytest.raises(BenchError, match=r"^r: missing required config key 'must'$"):
        make_config(_Required, {}, "r")
    # any mapping is a mapping (the coercer wanted a dict)
    assert make_config(_All, {"mapping": types.MappingProxyType({"k": 1})}, "t").mapping == {"k": 1}
    # typed dicts and fixed-length tuples are checked against their item types (positionally)
    @dataclass
    class Typed:
        weights: dict[str, float] = field(default_factory=dict)
        shape: tuple[int, str] = (1, "a")

    assert make_config(Typed, {"weights": {"a": "0.5"}}, "t").weights == {"a": 0.5}
    with pytest.raises(BenchError, match=r"^t.weights.a: expected a number, got 'x'$"):
        make_config(Typed, {"weights": {"a": "x"}}, "t")
    assert make_config(Typed, {"shape": ["2", "b"]}, "t").shape == (2, "b")
    with pytest.raises(BenchError, match=r"^t.shape: expected a list of more items"):
        make_config(Typed, {"shape": [2]}, "t")


def test_things_pydantic_would_allow_stay_rejected():
    """pydantic's lax mode takes more than the benchmark's policy does; these stay errors."""
    for key, value, needle in (
        ("n", True, "t.n: expected an integer, got True"),
        ("x", False, "t.x: expected a number, got False"),
        ("flag", 1, "t.flag: expected true/false, got 1"),
        ("flag", 0.0, "t.flag: expected true/false"),
        ("flag", "on", "t.flag: expected true/false, got 'on'"),
        ("flag", "y", "t.flag: expected true/false"),
        ("name", b"abc", "t.name: expected a string"),
        ("ids", {1, 2}, "t.ids: expected a list"),
        ("ids", iter([1]), "t.ids: expected a list"),
        ("fixed", {"a": 1}, "t.fixed: expected a list"),
        ("x", "nan", "t.x: NaN is not allowed"),
        ("either", None, "t.either: expected an integer, got None"),
    ):
        with pytest.raises(BenchError) as e:
            make_config(_All, {key: value}, "t")
        assert str(e.value).startswith(needle), (key, value, str(e.value))


def test_unions_try_members_in_order():
    got = make_config(_All, {"either": "3", "num_or_auto": "2", "word_or_flag": "yes"}, "t")
    assert (got.either, got.num_or_auto, got.word_or_flag) == (3, 2.0, True)
    assert type(got.num_or_auto) is float
    assert make_config(_All, {"either": "three"}, "t").either == "three"
    assert make_config(_All, {"num_or_auto": "auto"}, "t").num_or_auto == "auto"
    with pytest.raises(BenchError, match=r"^t.num_or_auto: expected a number, got 'manual'$"):
        make_config(_All, {"num_or_auto": "manual"}, "t")


def test_pass_through_and_copies():
    blob = {"a": [1]}
    got = make_config(_All, {"anything": blob, "mapping": blob, "ids": [1], "fixed": [1, "2"]}, "t")
    assert got.anything is blob  # Any: untouched
    assert got.mapping == blob and got.mapping is not blob  # dict: a copy
    assert got.fixed == (1, 2) and type(got.fixed) is tuple
    assert make_config(_All, None, "t") == _All()


def test_errors_are_one_line_without_pydantic_dumps():
    bad = [{"n": "x"}, {"ids": [1, [2]]}, {"mapping": 3}, {"either": [1]}, {"nested_lists": [[1], [2, "z"]]},
           {"fixed": {1}}, {"word_or_flag": 5}, {"opt_mode": 3}]
    for values in bad:
        with pytest.raises(BenchError) as e:
            make_config(_All, values, "t")
        msg = str(e.value)
        assert "\n" not in msg and "pydantic" not in msg and "http" not in msg and "type=" not in msg, msg
        assert msg.startswith("t."), msg
    with pytest.raises(BenchError, match=r"^t.nested_lists\[1\]\[1\]: expected an integer, got 'z'$"):
        make_config(_All, {"nested_lists": [[1], [2, "z"]]}, "t")
    with pytest.raises(BenchError, match=r"^t.opt_mode: 3 is not one of \['x', 'y'\]$"):
        make_config(_All, {"opt_mode": 3}, "t")


# --------------------------------------------------------------------------------------------
# Required keys, validate(), non-dataclasses
# --------------------------------------------------------------------------------------------


@dataclass
class _Required:
    must: int
    other: int = 0


@dataclass
class _Checked:
    k: int = 1

    def validate(self):
        if self.k > 3:
            raise BenchError(f"k too large: {self.k}")


def test_required_and_validate():
    assert make_config(_Required, {"must": "2"}, "r") == _Required(2)
    with pytest.raises(BenchError, match=r"^r: missing required config key 'must'$"):
        make_config(_Required, {"other": 1}, "r")
    with pytest.raises(BenchError, match=r"^r.must: expected an integer"):  # a bad value before a missing key
        make_config(_Required, {"must": "x"}, "r")
    with pytest.raises(BenchError, match=r"^k too large: 4$"):  # validate()'s own error, unchanged
        make_config(_Checked, {"k": 4}, "v")
    with pytest.raises(TypeError):
        make_config(dict, {}, "d")
    with pytest.raises(TypeError):
        make_config(_Checked(), {}, "d")


# --------------------------------------------------------------------------------------------
# Nested typed configs
# --------------------------------------------------------------------------------------------


@dataclass
class _GAN:
    dim: int = 16
    lr: float = 2e-4
    betas: tuple[float, ...] = (0.5, 0.999)

    def validate(self):
        if self.dim <= 0:
            raise BenchError(f"gan.dim must be positive, got {self.dim}")


@dataclass
class _Stage:
    steps: int = 1
    gan: _GAN = field(default_factory=_GAN)


@dataclass
class _Attack:
    gan: _GAN = field(default_factory=_GAN)
    stages: list[_Stage] = field(default_factory=list)
    extra: Optional[_GAN] = None
    n: int = 1
    calls: list = field(default_factory=list, repr=False, compare=False)

    def validate(self):
        if self.gan.dim > 1000:
            raise BenchError("attack: gan.dim too large")


def test_nested_configs_validate_from_mappings():
    got = make_config(_Attack, {"gan": {"dim": "32", "betas": ["0.1", 1]}, "stages": [{}, {"gan": {"lr": "1e-3"}}],
                                "extra": {"dim": 8}}, "attacks.gmi")
    assert got.gan == _GAN(dim=32, betas=(0.1, 1.0)) and type(got.gan.betas[1]) is float
    assert got.stages == [_Stage(), _Stage(gan=_GAN(lr=1e-3))]
    assert got.extra == _GAN(dim=8)
    assert make_config(_Attack, {"extra": None}, "a").extra is None
    assert make_config(_Attack, {}, "a") == _Attack()
    d = config_dict(make_config(_Attack, {"gan": {"dim": 4}}, "a"))
    assert d["gan"] == {"dim": 4, "lr": 2e-4, "betas": (0.5, 0.999)}
    inst = _GAN(dim=5)
    assert make_config(_Attack, {"gan": inst}, "a").gan is inst  # an instance is kept


@pytest.mark.parametrize("values,message", [
    ({"gan": {"dimm": 3}},
     "attacks.gmi.gan: unknown config key 'dimm' (did you mean 'dim'?); valid keys: betas, dim, lr"),
    ({"gan": {"dim": "x"}}, "attacks.gmi.gan.dim: expected an integer, got 'x'"),
    ({"gan": {"betas": [0.5, "nan"]}}, "attacks.gmi.gan.betas[1]: NaN is not allowed"),
    ({"gan": "wide"}, "attacks.gmi.gan: expected a mapping, got 'wide'"),
    ({"gan": None}, "attacks.gmi.gan: expected a mapping, got None"),
    ({"extra": 3}, "attacks.gmi.extra: expected a mapping, got 3"),
    ({"stages": [{}, {"gan": {"lrr": 1}}]},
     "attacks.gmi.stages[1].gan: unknown config key 'lrr' (did you mean 'lr'?); valid keys: betas, dim, lr"),
    ({"stages": [{"stepz": 1}]},
     "attacks.gmi.stages[0]: unknown config key 'stepz' (did you mean 'steps'?); valid keys: gan, steps"),
    ({"stages": {"steps": 1}}, "attacks.gmi.stages: expected a list, got {'steps': 1}"),
    ({"n": "x", "gan": {"dim": "y"}}, "attacks.gmi.n: expected an integer, got 'x'"),
    ({"gan": {"dim": "y"}, "n": "x"}, "attacks.gmi.gan.dim: expected an integer, got 'y'"),
])
def test_nested_config_errors_are_one_line_with_dotted_paths(values, message):
    with pytest.raises(BenchError) as e:
        make_config(_Attack, values, "attacks.gmi")
    assert str(e.value) == message


def test_nested_validate_methods_are_called():
    with pytest.raises(BenchError, match=r"^gan.dim must be positive, got -1$"):
        make_config(_Attack, {"gan": {"dim": -1}}, "a")
    with pytest.raises(BenchError, match=r"^gan.dim must be positive, got 0$"):
        make_config(_Attack, {"stages": [{"gan": {"dim": 0}}]}, "a")
    with pytest.raises(BenchError, match=r"^gan.dim must be positive, got -2$"):  # a given instance too
        make_config(_Attack, {"extra": _GAN(dim=-2)}, "a")
    with pytest.raises(BenchError, match=r"^attack: gan.dim too large$"):  # the outer one sees the nested one
        make_config(_Attack, {"gan": {"dim": 2000}}, "a")

    seen = []

    @dataclass
    class Leaf:
        v: int = 0

        def validate(self):
            seen.append("leaf")

    @dataclass
    class Root:
        leaf: Any = field(default_factory=Leaf)  # a nested config left at its default is checked too

        def validate(self):
            seen.append("root")

    make_config(Root, {}, "r")
    assert seen == ["leaf", "root"]


@dataclass
class _Deep3:
    depth: int = 3


@dataclass
class _Deep2:
    inner: _Deep3 = field(default_factory=_Deep3)


@dataclass
class _Deep1:
    inner: _Deep2 = field(default_factory=_Deep2)


def test_nested_configs_any_depth():
    assert make_config(_Deep1, {"inner": {"inner": {"depth": "7"}}}, "d").inner.inner.depth == 7
    with pytest.raises(BenchError, match=r"^d.inner.inner: unknown config key 'dept' \(did you mean 'depth'\?\); "
                                         r"valid keys: depth$"):
        make_config(_Deep1, {"inner": {"inner": {"dept": 1}}}, "d")
    with pytest.raises(BenchError, match=r"^d.inner.inner.depth: expected an integer, got 2.5$"):
        make_config(_Deep1, {"inner": {"inner": {"depth": 2.5}}}, "d")
