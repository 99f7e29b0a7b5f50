"""The CLI surface of the spine: registry lookups, ``bench list``, plugins, bad input, dry runs,
``--set`` overrides, reports and the leakage gate.

Exit codes: user error -> one line ``bench: error: ...`` on stderr and 2; failed cells -> 1.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    TINY_SUITE,
    assert_user_error,
    bench_cmd,
    bench_env,
    online,
    store_rows,
    write_suite,
)

# --------------------------------------------------------------------------------------------
# End to end through `python -m bench`: a user error and `bench list` with a pip-installed plugin.
# Subprocesses are expensive (each imports torch): two, overlapping with the pip install.
# --------------------------------------------------------------------------------------------

PLUGIN_SRC = Path(__file__).parent / "plugin_pkg"


def _install_plugin(base: Path) -> tuple[Path | None, str]:
    """pip-install tests/plugin_pkg (a copy: pip builds in tree) into a --target directory, offline."""
    try:
        import setuptools  # noqa: F401  (needed with --no-build-isolation)
    except ImportError:
        return None, "setuptools is not installed: cannot build the test plugin offline"
    src = base / "src"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = base / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:  # no pip, or no offline build backend: skip, do not fail
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        return None, f"cannot pip-install the test plugin offline: {tail}"
    assert list(target.glob("bench_test_plugin-*.dist-info")), "no dist-info: entry points cannot be found"
    return target, ""


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    env = bench_env({"BENCH_CACHE": str(base / "cache"), "BENCH_DATA": str(base / "data")})
    tiny = write_suite(base / "tiny.yaml")

    def start(argv, e):
        return subprocess.Popen(bench_cmd(*argv), cwd=base, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    # started before pip runs: the processes overlap (each pays the torch import)
    procs = {"unknown-defense": start(["run", "--suite", tiny, "--set", "defenses={nonee: {}}", "--out",
                                       base / "out-unknown"], env)}
    site, skip_reason = None, "not installed"
    try:
        site, skip_reason = _install_plugin(base)
        if site is not None:
            path = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
            procs["list"] = start(["list"], {**env, "PYTHONPATH": path})
    finally:
        results = {}
        for k, p in procs.items():
            out, err = p.communicate(timeout=600)
            results[k] = (p.returncode, out, err)
    return {"base": base, "results": results, "skip": skip_reason, "site": site}


def test_subprocess_unknown_name_is_one_line_exit_2(e2e):
    code, out, err = e2e["results"]["unknown-defense"]
    assert_user_error(code, out, err, "unknown defense 'nonee'", "did you mean 'none'?", "known: ")
    assert not (e2e["base"] / "out-unknown").exists(), "a user error must not create the run dir"


def _plugin_site(e2e):
    if e2e["skip"]:
        pytest.skip(e2e["skip"])
    return e2e["site"]


def test_bench_list_shows_units_builtins_and_the_plugin(e2e):
    _plugin_site(e2e)
    code, out, err = e2e["results"]["list"]
    assert code == 0, err
    for section in ("defenses:", "attacks:", "datasets:", "suites:"):
        assert section in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ")}
    assert "unit=none" in lines["none"]
    assert "unit=example" in lines["dpsgd"]
    assert "kind=membership" in lines["loss-threshold"]
    assert "digits" in lines and "mnist" in lines and "smoke" in lines
    # the plugin's entry points
    assert "unit=label" in lines["spine-plugin-defense"]
    assert "kind=membership" in lines["spine-plugin-attack"]
    # the deliberately broken entry point is a warning, not a crash
    assert "warning: plugin 'spine-plugin-broken'" in err and "deliberately broken" in err
    assert "Traceback" not in err


def test_plugin_is_not_installed_in_the_venv():
    from importlib.metadata import PackageNotFoundError, version

    with pytest.raises(PackageNotFoundError):
        version("bench-test-plugin")


def test_plugin_methods_run_through_the_runner(e2e, tmp_path, suite_file, monkeypatch):
    """The plugin's entry points, loaded the way the registry loads them, run as a suite (in-process:
    one more subprocess would cost another torch import)."""
    from importlib.metadata import entry_points

    from bench.core import registry
    from bench.harness.runner import run_suite
    from bench.harness.suite import load_suite

    site = _plugin_site(e2e)
    monkeypatch.syspath_prepend(str(site))
    eps = {ep.name: ep for group in ("bench.defenses", "bench.attacks", "bench.datasets")
           for ep in entry_points(group=group) if ep.name.startswith("spine-plugin")}
    assert set(eps) == {"spine-plugin-defense", "spine-plugin-attack", "spine-plugin-broken", "spine-plugin-bars",
                        "spine-plugin-inversion", "spine-plugin-fidelity", "spine-plugin-audit"}
    for name, ep in eps.items():
        if name != "spine-plugin-broken":
            ep.load()
    with pytest.raises(RuntimeError, match="deliberately broken"):
        eps["spine-plugin-broken"].load()
    assert registry.get_defense("spine-plugin-defense").privacy_unit == "label"
    suite = suite_file(seeds=[0], datasets={"digits": {"protocol": {"members": 100, "val": 50, "nonmembers": 100}}},
                       defenses={"spine-plugin-defense": {"epochs": 2}}, attacks={"spine-plugin-attack": {"n": 50}})
    out = tmp_path / "out"
    res = run_suite(load_suite(str(suite)), out, cache_dir=tmp_path / "c", echo=lambda m: None, progress=False)
    assert res["done"] == 1, store_rows(out, "SELECT error FROM cells")
    metrics = {(r["source"], r["name"]): r["value"] for r in store_rows(out, "SELECT * FROM metrics")}
    assert metrics[("spine-plugin-attack", "n_scored")] == 100.0
    assert 0.0 <= metrics[("spine-plugin-attack", "auc")] <= 1.0
    assert 0.0 <= metrics[("utility", "test_acc")] <= 1.0
    cell = store_rows(out, "SELECT * FROM cells")[0]
    assert cell["defense"] == "spine-plugin-defense" and cell["epsilon"] == 1.0
    assert json.loads(cell["privacy"])["unit"] == "label"


def test_plugin_dataset_and_an_attack_of_each_kind_run_and_report(e2e, tmp_path, suite_file, monkeypatch):
    """Issue 16's extension contract: a dataset, a defense and an attack of every kind, each one new
    file with one decorator in a separate package (tests/plugin_pkg), found through entry points,
    run through a smoke-sized suite and reported, with no change to the harness or the reports."""
    from importlib.metadata import entry_points

    from bench.core import registry
    from bench.harness.runner import run_suite
    from bench.harness.suite import load_suite
    from reports.write import write_report

    site = _plugin_site(e2e)
    monkeypatch.syspath_prepend(str(site))
    for group in ("bench.defenses", "bench.attacks", "bench.datasets"):
        for ep in entry_points(group=group):
            if ep.name.startswith("spine-plugin") and ep.name != "spine-plugin-broken":
                ep.load()
    kinds = {n: registry.get_attack(n).kind for n in ("spine-plugin-attack", "spine-plugin-inversion",
                                                       "spine-plugin-fidelity", "spine-plugin-audit")}
    assert sorted(kinds.values()) == ["audit", "generator", "inversion", "membership"]
    protocol = {"members": 200, "val": 100, "nonmembers": 200}
    suite = suite_file(seeds=[0], datasets={"spine-plugin-bars": {"protocol": protocol,
                                                                   "inversion": {"members": 150, "val": 50,
                                                                                 "nonmembers": 100}}},
                       defenses={"spine-plugin-defense": {"epochs": 3},
                                 "vae-metric": {"vae_epochs": 2, "student_epochs": 1, "hidden": 32}},
                       attacks={a: {} for a in kinds})
    out = tmp_path / "out"
    res = run_suite(load_suite(str(suite)), out, cache_dir=tmp_path / "c", echo=lambda m: None, progress=False)
    assert res["done"] == 2 and res["failed"] == 0, store_rows(out, "SELECT error FROM cells")
    recorded = {(r["name"], r["kind"]) for r in store_rows(out, "SELECT name, kind FROM attacks")}
    assert recorded == set(kinds.items())
    m = {(r["defense"], r["source"], r["name"]): r["value"] for r in store_rows(
        out, "SELECT c.defense, m.source, m.name, m.value FROM metrics m JOIN cells c USING (cell_key)")}
    assert 0.0 <= m[("spine-plugin-defense", "spine-plugin-attack", "auc")] <= 1.0
    assert 0.0 <= m[("spine-plugin-defense", "spine-plugin-inversion", "top1")] <= 1.0
    assert m[("spine-plugin-defense", "spine-plugin-audit", "eps_lb")] >= 0.0
    assert ("spine-plugin-defense", "spine-plugin-fidelity", "mean_confidence") not in m  # no generator: skipped
    assert 0.25 <= m[("vae-metric", "spine-plugin-fidelity", "mean_confidence")] <= 1.0
    files = write_report(out, tmp_path / "report")
    text = "\n".join(p.read_text() for p in files if p.suffix == ".md")
    for attack, metric in (("spine-plugin-attack", "AUC"), ("spine-plugin-inversion", "top-1"),
                           ("spine-plugin-fidelity", "mean_confidence"), ("spine-plugin-audit", "ε̂")):
        assert re.search(re.escape(attack) + r": [^|\n]*" + re.escape(metric), text), (attack, metric, text[:3000])


# --------------------------------------------------------------------------------------------
# Registry and `bench list`, in-process
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sets,needles", [
    (["attacks={loss-treshold: {}}"], ["unknown attack 'loss-treshold'", "did you mean 'loss-threshold'?"]),
    (["datasets=[digitz]"], ["unknown dataset 'digitz'", "did you mean 'digits'?"]),
    (["defenses={nonee: {}}"], ["unknown defense 'nonee'", "did you mean 'none'?"]),
])
def test_unknown_names_suggest_the_closest(cli, suite_file, tmp_path, sets, needles):
    argv = ["run", "--suite", suite_file(), "--out", tmp_path / "out"]
    for s in sets:
        argv += ["--set", s]
    code, o, e = cli(*argv)
    assert_user_error(code, o, e, *needles)
    assert not (tmp_path / "out").exists()


def test_unknown_suite_suggests_the_closest(cli, tmp_path):
    code, o, e = cli("run", "--suite", "smok", "--out", tmp_path / "out")
    assert_user_error(code, o, e, "unknown suite 'smok'", "did you mean 'smoke'?", ".yaml")


def test_bench_list_in_process(cli):
    from bench.core import registry

    code, out, err = cli("list", "defenses")
    assert code == 0, err
    rows = [ln.split() for ln in out.splitlines() if ln.strip()]
    # `bench list` shows what is installed; classes earlier tests registered in this process (test
    # defenses, a plugin whose site directory was on sys.path only for that test) are not
    installed = [n for n in registry.names("defenses")
                 if registry.get_defense(n).__module__.split(".")[0] in ("defenses", "bench")]
    assert [r[0] for r in rows] == installed
    for r in rows:
        assert r[1] == f"unit={registry.get_defense(r[0]).privacy_unit}"
    assert "attacks:" not in out and "loss-threshold" not in out
    code, out, err = cli("list", "suites")
    assert code == 0 and "smoke" in out and "defenses:" not in out
    code, out, err = cli("list")
    assert code == 0 and all(s in out for s in ("defenses:", "attacks:", "datasets:", "suites:"))


def test_registry_get_unknown_name_suggests_in_process():
    from bench.core import registry
    from bench.core.errors import BenchError

    with pytest.raises(BenchError, match=r"unknown defense 'dpsgdd' \(did you mean 'dpsgd'\?\); known: .*none"):
        registry.get_defense("dpsgdd")
    with pytest.raises(BenchError) as e:
        registry.get_attack("zzzzzz")
    assert "did you mean" not in str(e.value)  # nothing close: no suggestion
    assert "\n" not in str(e.value)


def test_registering_a_second_class_under_a_taken_name_is_refused():
    from bench.core.api import Defense
    from bench.core.registry import register_defense

    with pytest.raises(ValueError, match="registered twice"):
        @register_defense("none")
        class Impostor(Defense):
            pass


# --------------------------------------------------------------------------------------------
# Bad input, in-process (same code path as the CLI, without paying the torch import each time)
# --------------------------------------------------------------------------------------------

BAD_SETS = {
    "epsilon-zero": (["epsilons=[0]"], "epsilon must be a positive number"),
    "epsilon-negative": (["epsilons=[-1]"], "epsilon must be a positive number"),
    "epsilon-nan": (["epsilons=[.nan]"], "epsilon must be a positive number"),
    "epsilon-abc": (["epsilons=[abc]"], "epsilon must be a positive number, got 'abc'"),
    "epsilon-null": (["epsilons=null"], "epsilon must be a positive number"),
    "epsilon-bool": (["epsilons=[true]"], "epsilon must be a positive number"),
    "epsilon-empty": (["epsilons=[]"], "'epsilons' must not be empty"),
    "epsilon-scalar-zero": (["epsilons=0"], "epsilon must be a positive number"),
    "delta-zero": (["delta=0"], "delta must be in (0, 1)"),
    "delta-one": (["delta=1"], "delta must be in (0, 1)"),
    "delta-above-one": (["delta=1.5"], "delta must be in (0, 1)"),
    "delta-negative": (["delta=-1e-5"], "delta must be in (0, 1)"),
    "delta-nan": (["delta=.nan"], "delta must be"),
    "delta-abc": (["delta=abc"], "delta must be a number in (0, 1)"),
    "unknown-config-key": (["defenses.none.epochz=3"],
                           "defenses.none: unknown config key 'epochz' (did you mean 'epochs'?); valid keys: "),
    "unknown-attack-config-key": (["attacks.loss-threshold.neval=3"], "unknown config key 'neval'"),
    "unknown-protocol-key": (["datasets.digits.protocol.memberz=3"], "unknown config key 'memberz'"),
    "unknown-suite-key": (["epsilon=[1]"], "unknown key 'epsilon' (did you mean 'epsilons'?); valid keys: "),
    "unknown-dataset-key": (["datasets.digits.protokol={}"], "unknown key 'protokol'"),
    "bad-int": (["defenses.none.epochs=abc"], "defenses.none.epochs: expected an integer, got 'abc'"),
    "bad-float": (["defenses.none.lr=fast"], "defenses.none.lr: expected a number"),
    "nan-float": (["defenses.none.lr=.nan"], "NaN is not allowed"),
    "bad-literal": (["defenses.none.optimizer=rmsprop"], "is not one of ['adam', 'sgd']"),
    "bad-bool": (["defenses.none.select_on_val=maybe"], "expected true/false"),
    "protocol-nonpositive": (["datasets.digits.protocol.members=0"], "protocol.members must be positive"),
    "seeds-not-int": (["seeds=[a]"], "seeds must be integers"),
    "seeds-empty": (["seeds=[]"], "'seeds' is required"),
    "defenses-empty": (["defenses={}"], "'defenses' is required"),
    "defense-config-not-mapping": (["defenses.none=[1]"], "defenses.none must be a mapping"),
    "set-without-equals": (["defenses.none.epochs"], "--set expects key=value"),
    "set-empty-key": (["=3"], "--set expects key=value"),
    "set-unparsable": (["seeds=[0"], "cannot parse value"),
    "set-through-list": (["seeds.x=1"], "'seeds' is not a mapping"),
    "dpsgd-validate": (["defenses.dpsgd.max_grad_norm=0"], "must be positive"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETS))
def test_bad_set_is_one_line_exit_2_and_writes_nothing(cli, suite_file, tmp_path, case):
    sets, needle = BAD_SETS[case]
    out = tmp_path / "out"
    argv = ["run", "--suite", suite_file(), "--out", out]
    for s in sets:
        argv += ["--set", s]
    code, o, e = cli(*argv)
    assert_user_error(code, o, e, needle)
    assert not out.exists(), "nothing may be written for a user error"


def test_unknown_config_key_lists_every_valid_key(cli, suite_file):
    from defenses.none import NoneConfig

    code, o, e = cli("run", "--suite", suite_file(), "--set", "defenses.none.epochz=3", "--dry-run")
    line = assert_user_error(code, o, e)
    listed = line.split("valid keys: ", 1)[1].split(", ")
    assert listed == sorted(f.name for f in dataclasses.fields(NoneConfig))


@pytest.mark.parametrize("text,needle", [
    ("name: bad\ndatasets: [digits\nseeds: [0]\n", "at line"),
    ("- just\n- a list\n", "expected a mapping at the top level"),
    ("name: x\n  datasets: {digits: {}}\n bad indentation: [\n", "malformed suite file"),
    ("", "expected a mapping at the top level"),
])
def test_malformed_suite_file(cli, tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    code, o, e = cli("run", "--suite", p, "--out", tmp_path / "out")
    assert_user_error(code, o, e, "malformed suite file", needle)
    assert not (tmp_path / "out").exists()


def test_missing_suite_file(cli, tmp_path):
    code, o, e = cli("run", "--suite", tmp_path / "nope.yaml")
    assert_user_error(code, o, e, "suite file not found")


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_jobs_must_be_positive(cli, suite_file, tmp_path, jobs):
    code, o, e = cli("run", "--suite", suite_file(), "--jobs", jobs, "--out", tmp_path / "out")
    assert_user_error(code, o, e, "--jobs must be >= 1")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,needle", [
    (["run"], "the following arguments are required: --suite"),
    (["run", "--suite", "smoke", "--jobs", "two"], "invalid int value"),
    (["list", "widgets"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
    (["run", "--suite", "smoke", "--device", "tpu"], "invalid choice"),
    (["check", "somewhere"], "the following arguments are required: --baseline"),
])
def test_argparse_errors_are_one_line_exit_2(cli, argv, needle):
    code, o, e = cli(*argv)
    assert_user_error(code, o, e, needle)


def test_cuda_requested_without_cuda(cli, suite_file, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, o, e = cli("run", "--suite", suite_file(), "--device", "cuda", "--out", tmp_path / "out")
    assert_user_error(code, o, e, "--device cuda")
    assert not (tmp_path / "out" / "results.sqlite").exists()


@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist"])
def test_dataset_missing_offline(cli, suite_file, tmp_path, isolated_env, dataset):
    if online():
        pytest.skip("this machine is online: torchvision would download the dataset")
    suite = suite_file(datasets={dataset: {"protocol": {"members": 10, "val": 10, "nonmembers": 10}}},
                       defenses={"none": {"epochs": 1}}, attacks={})
    out = tmp_path / "out"
    code, o, e = cli("run", "--suite", suite, "--out", out)
    line = assert_user_error(code, o, e, f"dataset '{dataset}' is not available under", "BENCH_DATA")
    assert str(isolated_env["data"]) in line
    assert "train-images-idx3-ubyte" in line  # names the files it expected
    assert not out.exists()


def test_report_on_directory_without_run(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for d in (empty, tmp_path / "does-not-exist"):
        code, o, e = cli("report", d)
        assert_user_error(code, o, e, "holds no run")
    assert not (empty / "report").exists() and not (empty / "results.sqlite").exists()
    assert not (tmp_path / "does-not-exist").exists()


def test_report_on_run_without_finished_cells(cli, tmp_path):
    from bench.core.store import Store

    Store(tmp_path / "r").close()
    code, o, e = cli("report", tmp_path / "r")
    assert_user_error(code, o, e, "no finished cells")


def test_check_with_missing_or_malformed_baseline(cli, finished_run, tmp_path):
    code, o, e = cli("check", finished_run["out"], "--baseline", tmp_path / "missing.json")
    assert_user_error(code, o, e, "baseline file not found", "--write-baseline")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, o, e = cli("check", finished_run["out"], "--baseline", bad)
    assert_user_error(code, o, e, "is not a bench baseline")
    code, o, e = cli("check", tmp_path / "no-run", "--baseline", bad, "--write-baseline")
    assert_user_error(code, o, e, "holds no run")
    assert bad.read_text() == "{not json"  # untouched


def test_check_rejects_negative_tolerance(cli, finished_run, tmp_path):
    base = tmp_path / "b.json"
    assert cli("check", finished_run["out"], "--baseline", base, "--write-baseline")[0] == 0
    code, o, e = cli("check", finished_run["out"], "--baseline", base, "--tolerance", "-0.1")
    assert_user_error(code, o, e, "tolerances must be >= 0")


# Regression tests for bugs found while writing these tests (all fixed).

@pytest.mark.parametrize("value", ["datasets.digits=5", "datasets.digits.protocol=5"])
def test_bug_non_mapping_dataset_config_is_a_user_error(cli, suite_file, value):
    code, o, e = cli("run", "--suite", suite_file(), "--set", value, "--dry-run")
    assert_user_error(code, o, e, "datasets.digits")


def test_bug_scalar_seed_zero_is_accepted(cli, suite_file):
    code, o, e = cli("run", "--suite", suite_file(), "--set", "seeds=0", "--dry-run")
    assert code == 0, e
    assert "seed=0" in o


def test_bug_negative_seed_is_a_user_error(cli, suite_file, tmp_path):
    code, o, e = cli("run", "--suite", suite_file(), "--set", "seeds=[-1]", "--dry-run")
    assert_user_error(code, o, e, "seed")


def test_bug_out_is_a_file(cli, suite_file, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    code, o, e = cli("run", "--suite", suite_file(), "--out", f, "--set", "seeds=[0]",
                     "--set", "defenses={none: {arch: mlp, epochs: 1}}")
    assert_user_error(code, o, e, str(f))


# --------------------------------------------------------------------------------------------
# --dry-run and --set
# --------------------------------------------------------------------------------------------

def test_dry_run_lists_cells_and_creates_nothing(cli, suite_file, tmp_path, isolated_env):
    out = tmp_path / "out"
    code, o, e = cli("run", "--suite", suite_file(), "--dry-run", "--out", out)
    assert code == 0, e
    lines = o.strip().splitlines()
    assert "4 cells (dry run, nothing trained)" in lines[0]
    cells = [ln.split() for ln in lines[1:]]
    assert sorted((c[0], c[1], c[3], c[4]) for c in cells) == sorted(
        ("digits", eps, d, f"seed={s}") for d, eps in (("none", "eps=inf"), ("dpsgd", "eps=1")) for s in (0, 1))
    assert all(c[-1] == "attacks=loss-threshold" for c in cells)
    assert not out.exists()
    assert not isolated_env["cache"].exists()
    assert not (tmp_path / "runs").exists()


def test_set_overrides_with_dotted_keys(cli, suite_file):
    from bench.harness.suite import load_suite

    path = suite_file()
    s = load_suite(str(path), ["defenses.none.epochs=1", "seeds=[0,1,2]", "defenses.dpsgd.lr=1e-2",
                               "datasets.digits.protocol.members=50", "attacks.loss-threshold.n_eval=7",
                               "delta=1e-6"])
    assert s.defenses["none"]["epochs"] == 1
    assert s.defenses["none"]["lr"] == TINY_SUITE["defenses"]["none"]["lr"]  # siblings kept
    assert s.defenses["dpsgd"]["lr"] == pytest.approx(0.01)  # YAML reads 1e-2 as a string: coerced
    assert s.seeds == [0, 1, 2]
    assert s.datasets["digits"]["protocol"]["members"] == 50
    assert s.datasets["digits"]["protocol"]["val"] == 100
    assert s.attacks["loss-threshold"]["n_eval"] == 7
    assert s.delta == 1e-6
    # resolved configs carry every default
    from defenses.none import NoneConfig

    assert set(s.defenses["none"]) == {f.name for f in dataclasses.fields(NoneConfig)}
    # and the CLI uses them
    code, o, e = cli("run", "--suite", path, "--dry-run", "--set", "seeds=[0,1,2]", "--set", "defenses.none.epochs=1")
    assert code == 0, e
    assert "6 cells" in o and "seed=2" in o
    # a later --set wins; a --set creates missing mappings
    s = load_suite(str(path), ["seeds=[5]", "seeds=[6]", "defenses={none: {epochs: 2}}"])
    assert s.seeds == [6] and list(s.defenses) == ["none"] and s.defenses["none"]["epochs"] == 2


def test_non_private_defense_gets_one_cell_whatever_the_epsilon_grid(cli, suite_file):
    from bench.harness.suite import load_suite

    s = load_suite(str(suite_file()), ["epsilons=[0.5, 1, 2, 8]", "seeds=[0,1,2]"])
    cells = s.cells()
    none = [c for c in cells if c.defense == "none"]
    dp = [c for c in cells if c.defense == "dpsgd"]
    assert len(none) == 3 and all(math.isinf(c.epsilon) for c in none)
    assert sorted(c.seed for c in none) == [0, 1, 2]
    assert len(dp) == 4 * 3
    assert sorted({c.epsilon for c in dp}) == [0.5, 1.0, 2.0, 8.0]
    assert len(cells) == 15
    code, o, e = cli("run", "--suite", suite_file(), "--dry-run", "--set", "epsilons=[0.5, 1, 2, 8]",
                     "--set", "seeds=[0,1,2]")
    assert code == 0 and "15 cells" in o
    assert sum("none" in ln.split() for ln in o.splitlines()) == 3


def test_epsilon_grid_accepts_inf_strings_and_scalars():
    from bench.harness.suite import _epsilon, load_suite

    assert math.isinf(_epsilon("inf")) and math.isinf(_epsilon("∞"))
    assert _epsilon("0.5") == 0.5
    s = load_suite(str(write_suite(Path("s.yaml"))), ["epsilons=2"])
    assert s.epsilons == [2.0]


# --------------------------------------------------------------------------------------------
# Reports and the leakage gate
# --------------------------------------------------------------------------------------------

def test_report_writes_md_csv_tex_with_mean_and_std(cli, finished_run, tmp_path):
    import statistics

    out = tmp_path / "report"
    code, o, e = cli("report", finished_run["out"], "--out", out)
    assert code == 0, e
    paths = [Path(p) for p in o.split()]
    tables = {p.name for p in paths if p.parent == out}
    expected = {f"{t}.{ext}" for t in ("summary", "accuracy", "membership") for ext in ("md", "csv", "tex")}
    assert expected | {"audit.md", "audit.csv", "report.html"} <= tables, sorted(tables)
    # one ROC figure (linear + log-log panels) per finished cell with a membership attack
    roc = [p for p in paths if p.parent == out / "roc"]
    assert len(roc) == len(store_rows(finished_run["out"], "SELECT cell_key FROM cells WHERE status='done'"))
    assert all(p.suffix == ".png" for p in roc)
    assert all(p.stat().st_size > 0 for p in paths)
    acc = {}
    for r in store_rows(finished_run["out"], "SELECT c.defense, m.value FROM metrics m JOIN cells c "
                                             "USING (cell_key) WHERE m.name='test_acc'"):
        acc.setdefault(r["defense"], []).append(r["value"])
    md = (out / "summary.md").read_text()
    tex = (out / "summary.tex").read_text()
    for vals in acc.values():
        assert len(vals) == 2
        m, s = statistics.mean(vals), statistics.stdev(vals)
        cell = f"{100 * m:.2f} ± {100 * s:.2f}"
        assert cell in md, f"{cell} not in summary.md"
        assert f"{100 * m:.2f} $\\pm$ {100 * s:.2f}" in tex
    assert "loss-threshold: AUC" in md and "∞ (not private)" in md and "example" in md
    rows = list(csv.DictReader((out / "summary.csv").open()))
    got = {r["defense"]: r for r in rows if r["metric"] == "test_acc"}
    for d, vals in acc.items():
        assert float(got[d]["mean"]) == pytest.approx(statistics.mean(vals))
        assert float(got[d]["std"]) == pytest.approx(statistics.stdev(vals))
        assert int(got[d]["count"]) == 2
    assert "\\begin{tabular}" in tex


def test_report_default_location_is_inside_the_run(cli, copy_run):
    code, o, e = cli("report", copy_run)
    assert code == 0, e
    assert (copy_run / "report" / "summary.md").exists()


def _baseline(cli, run_dir, path):
    code, o, e = cli("check", run_dir, "--baseline", path, "--write-baseline")
    assert code == 0, e
    return json.loads(Path(path).read_text())


def test_check_passes_against_its_own_baseline(cli, finished_run, tmp_path):
    base = tmp_path / "sub" / "baseline.json"
    data = _baseline(cli, finished_run["out"], base)
    rows = data["rows"]
    assert set(rows) == {"digits/none/eps=inf", "digits/dpsgd/eps=1"}
    for r in rows.values():
        assert r["utility.test_acc"]["worse"] == "lower"
        assert r["loss-threshold.auc"]["worse"] == "higher"
    code, o, e = cli("check", finished_run["out"], "--baseline", base)
    assert code == 0, o + e
    assert o.strip().splitlines()[-1] == "check passed"
    assert "FAIL" not in o


@pytest.mark.parametrize("metric,delta,fails", [
    ("loss-threshold.auc", -0.2, True),        # the baseline leaked less than the run: leakage rose
    ("loss-threshold.auc", -0.04, False),      # within the 0.05 leakage tolerance
    ("loss-threshold.auc", +0.3, False),       # the run leaks less than the baseline: fine
    ("utility.test_acc", +0.1, True),          # the baseline was more accurate: accuracy fell
    ("utility.test_acc", +0.01, False),        # within the 0.02 accuracy tolerance
    ("loss-threshold.tpr_at_1%fpr", -0.5, True),
])
def test_check_gate_on_edited_baseline(cli, finished_run, tmp_path, metric, delta, fails):
    base = tmp_path / "baseline.json"
    data = _baseline(cli, finished_run["out"], base)
    row = "digits/none/eps=inf"
    data["rows"][row][metric]["value"] += delta
    base.write_text(json.dumps(data))
    code, o, e = cli("check", finished_run["out"], "--baseline", base)
    assert code == (1 if fails else 0), o + e
    fail_lines = [ln for ln in o.splitlines() if ln.startswith("FAIL")]
    if fails:
        assert len(fail_lines) == 1 and row in fail_lines[0] and metric in fail_lines[0]
        assert "check FAILED" in o
    else:
        assert not fail_lines


def test_check_fails_on_a_baseline_row_missing_from_the_run(cli, finished_run, tmp_path):
    base = tmp_path / "baseline.json"
    data = _baseline(cli, finished_run["out"], base)
    data["rows"]["digits/dpsgd/eps=8"] = data["rows"]["digits/dpsgd/eps=1"]
    base.write_text(json.dumps(data))
    code, o, _ = cli("check", finished_run["out"], "--baseline", base)
    assert code == 1
    assert "FAIL digits/dpsgd/eps=8: missing from the run" in o


@pytest.mark.parametrize("content", ['{"rows": []}', '{"rows": {"digits/none/eps=inf": {"utility.test_acc": 0.9}}}',
                                     '{"rows": {"digits/none/eps=inf": {"utility.test_acc": {"value": 0.9}}}}'])
def test_bug_wrongly_shaped_baseline_is_a_user_error(cli, finished_run, tmp_path, content):
    base = tmp_path / "baseline.json"
    base.write_text(content)
    code, o, e = cli("check", finished_run["out"], "--baseline", base)
    assert_user_error(code, o, e, "baseline")


def test_bug_nan_tolerance_is_rejected(cli, finished_run, tmp_path):
    base = tmp_path / "baseline.json"
    data = _baseline(cli, finished_run["out"], base)
    data["rows"]["digits/none/eps=inf"]["loss-threshold.auc"]["value"] -= 0.4
    base.write_text(json.dumps(data))
    code, o, e = cli("check", finished_run["out"], "--baseline", base, "--tolerance", "nan")
    assert code != 0, "a NaN tolerance silently disabled the leakage gate"
