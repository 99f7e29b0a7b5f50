"""Unit tests of the spine's pure parts: typed configs, leakage metrics, seeded data protocols,
the content-addressed cache and the SQLite store."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pytest
import torch
from conftest import assert_user_error, write_fake_mnist

from bench.core.errors import BenchError

# --------------------------------------------------------------------------------------------
# config.make_config
# --------------------------------------------------------------------------------------------


@dataclass
class _Cfg:
    flag: bool = False
    n: int = 1
    x: float = 0.5
    mode: Literal["a", "b"] = "a"
    opt: Optional[int] = None
    ids: list[int] = field(default_factory=list)
    pair: Optional[list[float]] = None
    name: str = "n"
    anything: Any = None
    mapping: dict[str, Any] = field(default_factory=dict)
    pep604: int | None = None
    fixed: tuple[int, ...] = ()


@dataclass
class _Required:
    must: int


@dataclass
class _Validated:
    k: int = 1

    def validate(self):
        if self.k > 3:
            raise BenchError(f"k too large: {self.k}")


def test_make_config_defaults_and_config_dict():
    from bench.core.config import config_dict, make_config

    cfg = make_config(_Cfg, None, "t")
    assert cfg == _Cfg()
    d = config_dict(cfg)
    assert d["ids"] == [] and d["mode"] == "a" and set(d) == {f.name for f in dataclasses.fields(_Cfg)}
    assert config_dict({"a": 1}) == {"a": 1} and config_dict(None) == {}


@pytest.mark.parametrize("key,value,expected", [
    ("flag", True, True), ("flag", "yes", True), ("flag", "False", False), ("flag", "1", True), ("flag", "0", False),
    ("n", 3, 3), ("n", 3.0, 3), ("n", "7", 7), ("n", -2, -2),
    ("x", 2, 2.0), ("x", "1e-3", 1e-3), ("x", "inf", math.inf), ("x", 0.25, 0.25),
    ("mode", "b", "b"),
    ("opt", None, None), ("opt", "4", 4), ("pep604", None, None), ("pep604", 5.0, 5),
    ("ids", (1, "2", 3.0), [1, 2, 3]), ("ids", [], []),
    ("pair", ["1", 2], [1.0, 2.0]), ("pair", None, None),
    ("name", "abc", "abc"), ("anything", {"a": [1]}, {"a": [1]}), ("mapping", {"k": 1}, {"k": 1}),
    ("fixed", [1, "2"], (1, 2)),
])
def test_make_config_coerces(key, value, expected):
    from bench.core.config import make_config

    got = getattr(make_config(_Cfg, {key: value}, "t"), key)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("key,value,needle", [
    ("flag", "maybe", "t.flag: expected true/false"),
    ("flag", 2, "t.flag: expected true/false"),
    ("n", True, "t.n: expected an integer"),
    ("n", 3.5, "t.n: expected an integer"),
    ("n", "3.5", "t.n: expected an integer"),
    ("n", None, "t.n: expected an integer"),
    ("n", [1], "t.n: expected an integer"),
    ("x", "abc", "t.x: expected a number"),
    ("x", True, "t.x: expected a number"),
    ("x", None, "t.x: expected a number"),
    ("x", float("nan"), "t.x: NaN is not allowed"),
    ("x", ".nan", "t.x: expected a number"),
    ("mode", "c", "t.mode: 'c' is not one of ['a', 'b']"),
    ("mode", None, "is not one of"),
    ("opt", "x", "t.opt: expected an integer"),
    ("ids", "1,2", "t.ids: expected a list"),
    ("ids", [1, "two"], "t.ids[1]: expected an integer"),
    ("pair", "x", "t.pair: expected a list"),
    ("name", 5, "t.name: expected a string"),
    ("mapping", [1], "t.mapping: expected a mapping"),
])
def test_make_config_rejects_bad_values(key, value, needle):
    from bench.core.config import make_config

    with pytest.raises(BenchError) as e:
        make_config(_Cfg, {key: value}, "t")
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_bug_bare_list_and_dict_annotations_are_checked():
    from bench.core.config import make_config

    @dataclass
    class Bare:
        items: list = field(default_factory=list)
        table: dict = field(default_factory=dict)

    for key, value in (("items", "not-a-list"), ("table", [1, 2])):
        with pytest.raises(BenchError):
            make_config(Bare, {key: value}, "b")


def test_make_config_unknown_key_lists_valid_keys_and_suggests():
    from bench.core.config import make_config

    with pytest.raises(BenchError) as e:
        make_config(_Cfg, {"nn": 1}, "methods.x")
    msg = str(e.value)
    assert msg.startswith("methods.x: unknown config key 'nn' (did you mean 'n'?); valid keys: ")
    assert msg.split("valid keys: ")[1].split(", ") == sorted(f.name for f in dataclasses.fields(_Cfg))
    with pytest.raises(BenchError, match=r"unknown config key 'q'; valid keys: \(none\)"):
        from bench.core.config import EmptyConfig

        make_config(EmptyConfig, {"q": 1}, "e")


def test_make_config_required_validate_and_non_dataclass():
    from bench.core.config import make_config

    with pytest.raises(BenchError, match="r:.*must"):
        make_config(_Required, {}, "r")
    assert make_config(_Required, {"must": "2"}, "r").must == 2
    assert make_config(_Validated, {"k": 3}, "v").k == 3
    with pytest.raises(BenchError, match="k too large: 4"):
        make_config(_Validated, {"k": 4}, "v")
    with pytest.raises(TypeError):
        make_config(dict, {}, "d")


def test_builtin_method_configs_validate_their_defaults():
    from bench.core import registry
    from bench.core.config import make_config

    for kind in ("defenses", "attacks"):
        for name in registry.names(kind):
            make_config(registry.get(kind, name).Config, {}, f"{kind}.{name}")


# --------------------------------------------------------------------------------------------
# metrics.membership_metrics
# --------------------------------------------------------------------------------------------


def test_membership_metrics_perfect_separation():
    from bench.lib.membership.metrics import membership_metrics

    labels = np.r_[np.ones(500), np.zeros(500)]
    scores = np.r_[np.linspace(1.0, 2.0, 500), np.linspace(-2.0, 0.0, 500)]
    m = membership_metrics(scores, labels)
    assert m["auc"] == 1.0
    assert m["tpr_at_0.1%fpr"] == 1.0 and m["tpr_at_1%fpr"] == 1.0
    assert m["advantage"] == 1.0 and m["balanced_acc"] == 1.0
    assert m["n_members"] == 500 and m["n_nonmembers"] == 500
    inv = membership_metrics(-scores, labels)  # inverted scores: the worst attack
    assert inv["auc"] == 0.0 and inv["tpr_at_1%fpr"] == 0.0


def test_membership_metrics_identical_distributions():
    from bench.lib.membership.metrics import membership_metrics

    rng = np.random.default_rng(0)
    n = 20000
    scores = rng.normal(size=2 * n)
    labels = np.r_[np.ones(n), np.zeros(n)]
    m = membership_metrics(scores, labels)
    # null AUC std = sqrt((2n+1)/(12 n^2)) ~ 0.0029: 0.01 is > 3 sigma
    assert abs(m["auc"] - 0.5) < 0.01
    assert m["tpr_at_1%fpr"] < 0.02 and m["tpr_at_0.1%fpr"] < 0.005
    assert m["advantage"] < 0.03 and abs(m["balanced_acc"] - 0.5) < 0.015


def test_membership_metrics_ties_and_hand_computed_values():
    from bench.lib.membership.metrics import membership_metrics, tpr_at_fpr

    m = membership_metrics(np.zeros(10), np.r_[np.ones(5), np.zeros(5)])  # all tied: no information
    # TPR at 1 % FPR on the ROC with straight segments: a tie group split at random gives chance
    # (the ROC's vertices alone read 0.0, below chance)
    assert m["auc"] == 0.5 and m["advantage"] == 0.0 and m["tpr_at_1%fpr"] == pytest.approx(0.01)
    # members 3,2 / non-members 2.5,1: 3 of 4 pairs ordered -> AUC 0.75
    m = membership_metrics([3, 2, 2.5, 1], [1, 1, 0, 0])
    assert m["auc"] == pytest.approx(0.75)
    assert m["tpr_at_1%fpr"] == pytest.approx(0.5)  # threshold 3: TPR 1/2 at FPR 0
    assert m["advantage"] == pytest.approx(0.5)
    assert tpr_at_fpr(np.array([0.2, 0.5]), np.array([0.4, 0.9]), 0.1) == 0.0


@pytest.mark.parametrize("scores,labels,needle", [
    ([1, 2], [1, 1], "both members"),
    ([1, 2, 3], [1, 0], "same length"),
    ([[1, 2]], [[1, 0]], "1-D"),
    ([1, float("nan")], [1, 0], "finite"),
    ([1, float("inf")], [1, 0], "finite"),
])
def test_membership_metrics_rejects_bad_input(scores, labels, needle):
    from bench.lib.membership.metrics import membership_metrics

    with pytest.raises(ValueError, match=needle):
        membership_metrics(scores, labels)


# --------------------------------------------------------------------------------------------
# tasks: seeded splits
# --------------------------------------------------------------------------------------------

SMALL = {"members": 300, "val": 100, "nonmembers": 200}


def _task(seed=0, **protocol):
    from bench.lib.tasks import build_task

    return build_task("digits", {**SMALL, **protocol}, seed)


def test_same_seed_same_rows_different_seed_different_rows():
    a, b, c = _task(0), _task(0), _task(1)
    for split in ("members", "val", "nonmembers", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert np.array_equal(sa.index, sb.index)
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
    assert a.fingerprint == b.fingerprint
    assert not np.array_equal(a.members.index, c.members.index)
    assert a.fingerprint != c.fingerprint
    assert np.array_equal(a.test.index, c.test.index)  # the test split does not depend on the seed
    assert _task(0, members=299).fingerprint != a.fingerprint


def test_splits_are_disjoint_sized_and_consistent_with_the_raw_data():
    from bench.lib.tasks import _load_raw

    t = _task(3)
    raw = _load_raw("digits", os.environ["BENCH_DATA"])
    m, v, n = (set(t.members.index.tolist()), set(t.val.index.tolist()), set(t.nonmembers.index.tolist()))
    assert (len(m), len(v), len(n)) == (300, 100, 200)
    assert not (m & v) and not (m & n) and not (v & n)
    assert t.info["sizes"] == {"members": 300, "val": 100, "nonmembers": 200, "test": len(raw.test_y), "public": 0}
    for s in (t.members, t.val, t.nonmembers):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert s.x.shape[1:] == (1, 8, 8) and 0.0 <= float(s.x.min()) and float(s.x.max()) <= 1.0
        assert np.array_equal(s.x.numpy(), raw.train_x[s.index])
        assert np.array_equal(s.y.numpy(), raw.train_y[s.index])
    assert t.num_classes == 10 and t.image_shape == (1, 8, 8) and t.public is None
    pool = t.candidate_pool()
    assert len(pool) == 500 and set(pool.index.tolist()) == m | n


def test_inversion_protocol_private_and_public_classes():
    t = _task(0, kind="inversion", members=150, val=50, nonmembers=100)
    from bench.lib.tasks import _load_raw

    raw = _load_raw("digits", os.environ["BENCH_DATA"])
    assert t.protocol == "inversion" and t.num_classes == 5
    for s in (t.members, t.val, t.nonmembers):
        assert set(raw.train_y[s.index].tolist()) <= {0, 1, 2, 3, 4}
        assert np.array_equal(s.y.numpy(), raw.train_y[s.index])  # 0..4 map to themselves
    assert set(raw.test_y[t.test.index].tolist()) == {0, 1, 2, 3, 4}
    assert len(t.test) == int(np.isin(raw.test_y, [0, 1, 2, 3, 4]).sum())
    assert set(t.public.y.tolist()) == {5, 6, 7, 8, 9}
    assert len(t.public) == int(np.isin(raw.train_y, [5, 6, 7, 8, 9]).sum())
    private_rows = set(np.concatenate([t.members.index, t.val.index, t.nonmembers.index]).tolist())
    assert not private_rows & set(t.public.index.tolist())
    assert t.info["private_classes"] == [0, 1, 2, 3, 4] and t.info["public_classes"] == [5, 6, 7, 8, 9]

    custom = _task(0, kind="inversion", private_classes=[7, 3], members=100, val=20, nonmembers=50)
    assert custom.num_classes == 2
    for s in (custom.members, custom.test):
        orig = (raw.train_y if s is custom.members else raw.test_y)[s.index]
        assert set(orig.tolist()) == {3, 7}
        assert np.array_equal(s.y.numpy(), np.where(orig == 7, 0, 1))  # relabelled in the given order
    assert 3 not in set(custom.public.y.tolist()) and 7 not in set(custom.public.y.tolist())


def test_inversion_protocol_default_sizes_scale_to_the_private_share():
    from bench.lib.tasks import _load_raw, build_task

    raw = _load_raw("digits", os.environ["BENCH_DATA"])
    private_rows = int(np.isin(raw.train_y, [0, 1, 2, 3, 4]).sum())
    t = build_task("digits", {"kind": "inversion"}, 0)
    s = t.info["sizes"]
    frac = private_rows / len(raw.train_y)
    assert s["members"] == int(600 * frac) and s["val"] == int(200 * frac) and s["nonmembers"] == int(457 * frac)
    assert s["members"] + s["val"] + s["nonmembers"] <= private_rows


@pytest.mark.parametrize("protocol,needle", [
    ({"members": 1200, "val": 100, "nonmembers": 100}, "asks for 1400 training rows"),
    ({"kind": "inversion", "members": 600, "val": 100, "nonmembers": 100}, "are available"),
    ({"kind": "inversion", "private_classes": [0, 0]}, "distinct classes"),
    ({"kind": "inversion", "private_classes": [0, 10]}, "distinct classes in 0..9"),
    ({"kind": "inversion", "private_classes": []}, "distinct classes"),
    ({"members": -1}, "protocol.members must be positive"),
    ({"kind": "regression"}, "is not one of"),
])
def test_protocol_errors_are_clear(protocol, needle):
    from bench.lib.tasks import build_task

    with pytest.raises(BenchError, match=None) as e:
        build_task("digits", protocol, 0)
    assert needle in str(e.value)


def test_too_many_rows_fails_the_cell_with_a_clear_reason(cli, suite_file, tmp_path):
    suite = suite_file(datasets={"digits": {"protocol": {"members": 5000, "val": 100, "nonmembers": 100}}},
                       defenses={"none": {"epochs": 1}})
    code, o, e = cli("run", "--suite", suite, "--out", tmp_path / "o", "--set", "seeds=[0]")
    assert code != 0 and code != "EXCEPTION", (code, o, e)
    assert "Traceback" not in o + e
    assert "protocol asks for 5200 training rows" in o + e


def test_bug_too_many_rows_is_a_user_error_before_anything_is_written(cli, suite_file, tmp_path):
    suite = suite_file(datasets={"digits": {"protocol": {"members": 5000, "val": 100, "nonmembers": 100}}},
                       defenses={"none": {"epochs": 1}})
    code, o, e = cli("run", "--suite", suite, "--out", tmp_path / "o", "--set", "seeds=[0]")
    assert_user_error(code, o, e, "protocol asks for 5200 training rows")
    assert not (tmp_path / "o" / "results.sqlite").exists()


def test_image_size_resizes():
    t = _task(0, image_size=16)
    assert t.members.x.shape[1:] == (1, 16, 16) and t.image_shape == (1, 16, 16)
    assert t.fingerprint != _task(0).fingerprint


def test_task_derive():
    t = _task(0)
    pool = t.candidate_pool().index
    rows_a, rows_b = pool[:150], pool[100:250]
    a1, a2 = t.derive(rows_a, "ref0"), t.derive(rows_a[::-1], "ref0")
    b = t.derive(rows_b, "ref0")
    assert a1.fingerprint == a2.fingerprint  # row order does not matter
    assert a1.fingerprint != b.fingerprint  # rows do
    assert t.derive(rows_a, "ref1").fingerprint != a1.fingerprint  # and the tag
    assert a1.fingerprint != t.fingerprint and a1.info["derived_from"] == t.fingerprint
    assert t.derive(rows_a[:-1], "ref0").fingerprint != a1.fingerprint
    assert np.array_equal(np.sort(a1.members.index), np.sort(rows_a)) and len(a1.members) == 150
    assert a1.info["sizes"]["members"] == 150
    for s in ("val", "test", "nonmembers"):
        assert np.array_equal(getattr(a1, s).index, getattr(t, s).index)
    # each derived member row carries its own image and label
    pos = {int(r): i for i, r in enumerate(t.candidate_pool().index)}
    full = t.candidate_pool()
    for i, r in enumerate(a1.members.index[:20]):
        assert torch.equal(a1.members.x[i], full.x[pos[int(r)]]) and a1.members.y[i] == full.y[pos[int(r)]]
    with pytest.raises(ValueError, match="not in the task's candidate pool"):
        t.derive([int(t.val.index[0])], "bad")


def test_fake_mnist_in_torchvision_layout(tmp_path, cli, suite_file):
    """The real torchvision loader on a tiny hand-written IDX dataset (no download, no 60k rows)."""
    from bench.lib.tasks import _load_raw, build_task

    root = tmp_path / "fake-data"
    write_fake_mnist(root, n_train=400, n_test=100)
    raw = _load_raw("mnist", str(root))
    assert raw.train_x.shape == (400, 1, 28, 28) and raw.test_x.shape == (100, 1, 28, 28)
    assert raw.train_x.dtype == np.float32 and raw.train_x.max() == 1.0
    assert sorted(set(raw.train_y.tolist())) == list(range(10))
    # the stripe row equals the label: loader and writer agree on layout
    assert all(raw.train_x[i, 0, raw.train_y[i]].min() == 1.0 for i in range(20))

    t = build_task("mnist", {"kind": "inversion", "members": 100, "val": 40, "nonmembers": 50}, 1, root)
    assert t.num_classes == 5 and set(t.members.y.tolist()) <= set(range(5))
    assert set(t.public.y.tolist()) == {5, 6, 7, 8, 9} and t.image_shape == (1, 28, 28)
    with pytest.raises(BenchError, match="only 400 are available"):
        build_task("mnist", {}, 0, root)  # the MNIST defaults (60 000 rows) do not fit

    # end to end through the CLI with --data-root
    suite = suite_file(datasets={"mnist": {"protocol": {"members": 150, "val": 50, "nonmembers": 100}}},
                       defenses={"none": {"arch": "mlp", "epochs": 1}}, seeds=[0],
                       attacks={"loss-threshold": {"n_eval": 50}})
    out = tmp_path / "out"
    code, o, e = cli("run", "--suite", suite, "--data-root", root, "--out", out)
    assert code == 0, o + e
    assert "1 done, 0 failed" in o


def test_bug_fingerprint_covers_the_data_itself(tmp_path):
    from bench.lib.tasks import build_task

    write_fake_mnist(tmp_path / "a", seed=0)
    write_fake_mnist(tmp_path / "b", seed=1)  # same shapes and sizes, other pixels and labels
    p = {"members": 100, "val": 50, "nonmembers": 50}
    ta, tb = build_task("mnist", p, 0, tmp_path / "a"), build_task("mnist", p, 0, tmp_path / "b")
    assert not torch.equal(ta.members.x, tb.members.x)
    assert ta.fingerprint != tb.fingerprint


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------


def _bundle():
    return {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "idx": np.arange(5, dtype=np.int64),
            "info": {"b": [1, 2], "a": "x", "eps": math.inf}, "n": 3}


class _Builder:
    def __init__(self, fail=False):
        self.calls = 0
        self.fail = fail

    def __call__(self):
        self.calls += 1
        if self.fail:
            raise RuntimeError("build failed")
        return _bundle()


def _check_bundle(b):
    assert torch.equal(b["w"], _bundle()["w"])
    assert np.array_equal(b["idx"], np.arange(5)) and b["idx"].dtype == np.int64
    assert b["info"] == {"a": "x", "b": [1, 2], "eps": "inf"}  # JSON: inf is stored as "inf"
    assert b["n"] == 3


def test_cache_atomic_write_then_hit(tmp_path):
    from bench.core.cache import Cache, digest

    cache = Cache(tmp_path / "c")
    build, logs = _Builder(), []
    payload = {"k": 1, "cfg": {"b": 2, "a": 1}}
    b1, hit1 = cache.get_or_build("model", payload, build, logs.append)
    assert not hit1 and build.calls == 1
    _check_bundle(b1)
    entry = cache.path("model", digest(payload))
    assert entry.is_dir() and entry.parent.name == digest(payload)[:2]
    manifest = json.loads((entry / "manifest.json").read_text())
    assert set(manifest["files"]) == {"tensors.safetensors", "arrays.npz", "values.json"}
    assert manifest["kind"] == "model" and manifest["payload"] == {"cfg": {"a": 1, "b": 2}, "k": 1}
    assert not list(entry.parent.glob(".tmp-*")), "staging directory left behind"
    # second call, payload keys in another order: a hit, nothing built
    b2, hit2 = cache.get_or_build("model", {"cfg": {"a": 1, "b": 2}, "k": 1}, build, logs.append)
    assert hit2 and build.calls == 1
    _check_bundle(b2)
    assert cache.hits == 1 and cache.misses == 1
    assert any("cache hit" in m for m in logs) and any("cache miss" in m for m in logs)
    assert cache.contains("model", payload) and not cache.contains("model", {"k": 2})
    # another kind or payload is another entry
    cache.get_or_build("other", payload, build)
    cache.get_or_build("model", {"k": 2}, build)
    assert build.calls == 3


def test_cache_digest_is_canonical():
    from bench.core.cache import digest

    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": np.int64(3)}) == digest({"a": 3})
    assert digest({"e": math.inf}) == digest({"e": "inf"})
    assert digest({"a": 1}) != digest({"a": 2})
    assert digest({"t": (1, 2)}) == digest({"t": [1, 2]})


def _flip(path: Path):
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("victim,how", [
    ("tensors.safetensors", "flip"),
    ("arrays.npz", "flip"),
    ("values.json", "flip"),
    ("tensors.safetensors", "truncate"),
    ("values.json", "delete"),
    ("manifest.json", "delete"),
    pytest.param("manifest.json", "flip"),
    pytest.param("manifest.json", "truncate"),
])
def test_cache_corrupt_entry_is_detected_warned_and_rebuilt(tmp_path, victim, how):
    from bench.core.cache import Cache, digest

    cache = Cache(tmp_path / "c")
    build = _Builder()
    payload = {"k": "corrupt-me"}
    cache.get_or_build("model", payload, build)
    target = cache.path("model", digest(payload)) / victim
    if how == "flip":
        _flip(target)
    elif how == "truncate":
        target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 3)])
    else:
        target.unlink()
    logs = []
    with pytest.warns(UserWarning, match="corrupt cache entry"):
        b, hit = cache.get_or_build("model", payload, build, logs.append)
    assert not hit and build.calls == 2
    _check_bundle(b)
    assert any(m.startswith("WARNING corrupt cache entry") for m in logs)
    b, hit = cache.get_or_build("model", payload, build)  # the rebuilt entry is sound
    assert hit and build.calls == 2
    _check_bundle(b)


def test_cache_failed_build_leaves_nothing(tmp_path):
    from bench.core.cache import Cache, digest

    cache = Cache(tmp_path / "c")
    with pytest.raises(RuntimeError, match="build failed"):
        cache.get_or_build("model", {"k": 1}, _Builder(fail=True))
    entry = cache.path("model", digest({"k": 1}))
    assert not entry.exists()
    assert not list((tmp_path / "c").rglob(".tmp-*"))
    build = _Builder()
    _, hit = cache.get_or_build("model", {"k": 1}, build)
    assert not hit and build.calls == 1


def _concurrent_builder(args):
    """Runs in a spawned process: build one key, counting builds in a shared file."""
    root, counter = args
    import torch as _torch

    from bench.core.cache import Cache

    def build():
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # the other process queues on the lock meanwhile
        return {"t": _torch.arange(4), "who": os.getpid()}

    bundle, hit = Cache(root).get_or_build("shared", {"key": "one"}, build)
    return hit, int(bundle["who"]), bundle["t"].tolist()


def test_cache_concurrent_builders_build_once(tmp_path):
    """A spawned process and this one build the same key at the same time: one build, two results.

    (One spawned child, not two: each child pays the torch import.) The parent asks for the key
    while the child is inside ``build``, so the two really overlap."""
    from bench.core.cache import Cache

    counter = tmp_path / "builds.txt"
    counter.touch()
    root = str(tmp_path / "c")
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        child = pool.apply_async(_concurrent_builder, ((root, str(counter)),))
        t0 = time.time()
        while not counter.read_text() and time.time() - t0 < 300:
            time.sleep(0.02)
        assert counter.read_text(), "the child never started building"
        parent_builds = []

        def build():
            parent_builds.append(1)
            return {"t": torch.arange(4), "who": os.getpid()}

        bundle, parent_hit = Cache(root).get_or_build("shared", {"key": "one"}, build)
        child_hit, child_who, child_t = child.get(timeout=300)
    builders = counter.read_text().split()
    assert len(builders) == 1 and not parent_builds, "built more than once"
    assert parent_hit and not child_hit
    assert int(bundle["who"]) == child_who == int(builders[0]) != os.getpid()
    assert bundle["t"].tolist() == child_t == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------
# store
# --------------------------------------------------------------------------------------------


def test_store_records_cells_atomically_and_in_wal_mode(tmp_path):
    from bench.core.store import Store

    s = Store(tmp_path / "run")
    assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cell = {"dataset": "digits", "epsilon": math.inf, "delta": 1e-5, "defense": "none", "seed": 0}
    common = dict(run_id="r1", cell=cell, split={"s": 1}, privacy=None, info={}, wall_time=1.0, device="cpu",
                  prov={})
    s.record_cell(cell_key="k1", status="done", error=None, metrics=[("utility", "test_acc", 0.9)],
                  artifacts=[("release", "release", "abc", "/p")], **common)
    assert s.cell_status("k1") == "done" and s.cell_status("nope") is None
    row = s.cells()[0]
    assert row["epsilon"] is None and json.loads(row["config"])["epsilon"] == math.inf
    # a record that fails half-way leaves the previous state intact
    with pytest.raises(ValueError):
        s.record_cell(cell_key="k1", status="failed", error="x", metrics=[("utility", "test_acc", "not-a-number")],
                      **common)
    assert s.cell_status("k1") == "done"
    assert [m["value"] for m in s.metrics()] == [0.9]
    # rerecording replaces metrics and artifacts instead of accumulating them
    s.record_cell(cell_key="k1", status="done", error=None, metrics=[("utility", "val_acc", 0.8)], **common)
    assert [(m["name"], m["value"]) for m in s.metrics()] == [("val_acc", 0.8)]
    assert s.query("SELECT count(*) AS n FROM artifacts")[0]["n"] == 0
    s.close()
    assert Store.exists(tmp_path / "run") and not Store.exists(tmp_path / "elsewhere")


def test_store_user_error_helper_is_sane():
    # guard for the helper the CLI tests rely on
    assert_user_error(2, "", "bench: error: boom\n", "boom")
    with pytest.raises(AssertionError):
        assert_user_error(2, "", "Traceback (most recent call last):\nbench: error: x\n")
