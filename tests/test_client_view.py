"""The per-client membership view (bench/lib/membership/clients.py): each client's AUC is sklearn's
weighted AUC against non-members reweighted to its class mix; the permutation test of the most
exposed client is valid when clients differ only in their class mix (label skew with
class-dependent scores) and finds one client whose members are more exposed; the partition is
recomputed from the release's record and refused on a fingerprint mismatch; loss-threshold adds
the view on a FedAvg release and not on a release without clients, and so does every other
membership attack (references, label-only, shadow models) and every generator attack on a
federated generator release."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from attacks.loss_threshold import LossThreshold
from bench.core.cache import Cache
from bench.core.config import make_config
from bench.core.registry import get_attack
from bench.harness.context import CellContext, Env
from bench.lib.federated import client_of_members, find_partition, split_members
from bench.lib.membership.clients import per_client_view
from bench.lib.tasks import build_task
from defenses.fedavg import FedAvg, FedAvgConfig
from defenses.none import NoDefense

TASK = build_task("digits", {"members": 600, "val": 200, "nonmembers": 400}, 0)


def skewed(seed, n_members=1000, n_nonmembers=1000, clients=8, K=5, boost_client=None, boost=0.0):
    """Label-skewed clients (each mostly two classes); scores depend on the class (some classes
    are 'easier') and, for members, on a common membership shift; optionally one client's members
    get an extra shift."""
    rng = np.random.default_rng(seed)
    client = rng.integers(0, clients, n_members)
    cls_m = (client % K + rng.integers(0, 2, n_members)) % K  # client c: classes c mod K and c+1 mod K
    cls_n = rng.integers(0, K, n_nonmembers)
    ease = np.linspace(-1.5, 1.5, K)
    s_m = ease[cls_m] + 0.3 + rng.normal(size=n_members)
    if boost_client is not None:
        s_m[client == boost_client] += boost
    s_n = ease[cls_n] + rng.normal(size=n_nonmembers)
    scores = np.r_[s_m, s_n]
    labels = np.r_[np.ones(n_members), np.zeros(n_nonmembers)].astype(int)
    classes = np.r_[cls_m, cls_n]
    return scores, labels, classes, np.r_[client, -np.ones(n_nonmembers, int)], clients


def test_client_auc_is_sklearns_weighted_auc_with_ties():
    scores, labels, classes, client, C = skewed(0, 300, 300)
    scores = np.round(scores, 1)  # many ties
    _, arrays, _ = per_client_view(scores, labels, classes, client, C, min_members=1, permutations=0)
    for c in range(C):
        mem = (labels == 1) & (client == c)
        non = labels == 0
        share = np.bincount(classes[mem], minlength=5) / mem.sum()
        nm_share = np.bincount(classes[non], minlength=5) / non.sum()
        w = np.r_[np.ones(mem.sum()), share[classes[non]] / nm_share[classes[non]]]
        y = np.r_[np.ones(mem.sum()), np.zeros(non.sum())]
        ref = roc_auc_score(y, np.r_[scores[mem], scores[non]], sample_weight=w)
        assert arrays["client_auc"][c] == pytest.approx(ref, abs=1e-12)
    m, _, _ = per_client_view(scores, labels, classes, client, C, min_members=1, permutations=0)
    mem, non = labels == 1, labels == 0
    share = np.bincount(classes[mem], minlength=5) / mem.sum()
    nm_share = np.bincount(classes[non], minlength=5) / non.sum()
    w = np.where(mem, 1.0, share[classes] / nm_share[classes])
    assert m["auc_class_matched"] == pytest.approx(roc_auc_score(labels, scores, sample_weight=w), abs=1e-12)


def test_class_mix_difference_alone_moves_the_pooled_auc_not_the_class_matched_one():
    # no membership signal at all; the score depends on the class; members over-represent class 0
    rng = np.random.default_rng(5)
    cls_m = np.where(rng.random(2000) < 0.4, 0, rng.integers(1, 5, 2000))
    cls_n = rng.integers(0, 5, 2000)
    ease = np.array([2.0, 0.0, 0.0, 0.0, 0.0])
    scores = np.r_[ease[cls_m] + rng.normal(size=2000), ease[cls_n] + rng.normal(size=2000)]
    labels = np.r_[np.ones(2000), np.zeros(2000)].astype(int)
    m, _, _ = per_client_view(scores, labels, np.r_[cls_m, cls_n], np.r_[np.zeros(2000, int), -np.ones(2000, int)],
                              1, permutations=0)
    assert roc_auc_score(labels, scores) > 0.55
    assert abs(m["auc_class_matched"] - 0.5) < 0.03


def test_label_skew_alone_is_not_flagged():
    # every client's members have the same membership shift; only the class mix differs, which
    # moves the naive (unweighted) per-client AUCs a lot
    ps, spreads, naive = [], [], []
    for seed in range(20):
        scores, labels, classes, client, C = skewed(seed)
        m, arrays, _ = per_client_view(scores, labels, classes, client, C, permutations=200, seed=seed)
        ps.append(m["client_auc_max_p"])
        spreads.append(m["client_auc_max"] - m["client_auc_min"])
        non = labels == 0
        raw = [roc_auc_score(np.r_[np.ones(((labels == 1) & (client == c)).sum()), np.zeros(non.sum())],
                             np.r_[scores[(labels == 1) & (client == c)], scores[non]]) for c in range(C)]
        naive.append(max(raw) - min(raw))
    assert np.mean(np.array(ps) <= 0.05) <= 0.15, ps  # about 5 % expected
    assert np.median(naive) > 2 * np.median(spreads), (naive, spreads)


def test_one_exposed_client_is_found():
    scores, labels, classes, client, C = skewed(3, boost_client=5, boost=1.0)
    m, arrays, info = per_client_view(scores, labels, classes, client, C, permutations=500, seed=0)
    assert info["most_exposed_client"] == 5
    assert m["client_auc_max_p"] <= 0.01 and m["clients_scored"] == C
    assert m["client_auc_max"] == pytest.approx(arrays["client_auc"][5])


def test_small_clients_are_not_scored():
    scores, labels, classes, client, C = skewed(4, n_members=200)
    m, arrays, _ = per_client_view(scores, labels, classes, client, C, min_members=30, permutations=10)
    small = arrays["client_members"] < 30
    assert small.any() and np.isnan(arrays["client_auc"][small]).all()
    assert m["clients_scored"] == float((~small).sum())


def test_partition_recomputes_from_its_record_and_refuses_a_mismatch():
    clients, summary = split_members(TASK.members, TASK.num_classes, 6, "dirichlet", 0.3, seed=2)
    info = {"history": {}, "simulation": {"clients": summary}}
    found = find_partition(info)
    assert found is summary and found["spec"] == {"clients": 6, "scheme": "dirichlet", "alpha": 0.3, "seed": 2}
    assign = client_of_members(TASK.members, found)
    for i, part in enumerate(clients):
        rows = set(np.asarray(part.index).tolist())
        mine = set(np.asarray(TASK.members.index)[assign == i].tolist())
        assert rows == mine
    wrong = {**summary, "spec": {**summary["spec"], "seed": 3}}
    assert client_of_members(TASK.members, wrong) is None
    assert find_partition({"history": {"val_acc": [0.5]}}) is None


def _ctx(tmp_path, seed=0, defense="", defense_config=None):
    env = Env(str(tmp_path / "run"), str(tmp_path / "cache"), "", "cpu", "test", progress=False)
    return CellContext(env, Cache(env.cache_dir), TASK, math.inf, 0.0, seed, [], {}, {}, defense=defense,
                       defense_config=defense_config)


def test_loss_threshold_adds_the_view_on_a_federated_release_only(tmp_path):
    cfg = {"arch": "mlp", "clients": 4, "partition": "dirichlet", "alpha": 0.5, "rounds": 3, "batch_size": 20,
           "lr": 0.1}
    rel = FedAvg(make_config(FedAvgConfig, cfg, "fedavg")).fit(_ctx(tmp_path))
    atk = LossThreshold(make_config(LossThreshold.Config, {"n_eval": 300, "n_boot": 50}, "loss-threshold"))
    res = atk.run(_ctx(tmp_path), rel)
    m = res.metrics
    assert m["clients_scored"] == 4 and 0 <= m["client_auc_min"] <= m["client_auc_max"] <= 1
    assert 0 < m["client_auc_max_p"] <= 1 and res.arrays["client_members"].sum() == 300
    assert res.info["client_view"]["clients"] == 4
    plain = NoDefense(make_config(NoDefense.Config, {"arch": "mlp", "epochs": 2}, "none")).fit(_ctx(tmp_path))
    res2 = atk.run(_ctx(tmp_path), plain)
    assert "client_auc_max" not in res2.metrics and "client_view" not in res2.info
    assert "client_auc" not in res2.arrays and 0 <= res2.metrics["auc"] <= 1


FED = {"arch": "mlp", "clients": 4, "partition": "dirichlet", "alpha": 0.5, "rounds": 3, "batch_size": 20, "lr": 0.1}


@pytest.mark.parametrize("name,config", [
    ("rmia", {"n_references": 2, "n_population": 100}),
    ("lira", {"n_references": 2}),
    ("label-only", {"n_shadows": 0}),
    ("shadow", {"variant": "ml-leaks", "attack_model": "logreg"}),
])
def test_every_membership_attack_adds_the_view_on_a_federated_release(tmp_path, name, config):
    rel = FedAvg(make_config(FedAvgConfig, FED, "fedavg")).fit(_ctx(tmp_path))
    cls = get_attack(name)
    atk = cls(make_config(cls.Config, {**config, "n_eval": 200, "n_boot": 20}, name))
    res = atk.run(_ctx(tmp_path, defense="fedavg", defense_config=FED), rel)  # references refit FedAvg
    m = res.metrics
    assert set(m) <= set(cls.metrics), set(m) - set(cls.metrics)
    assert m["clients_scored"] == 4 and 0 <= m["client_auc_min"] <= m["client_auc_max"] <= 1
    assert 0 <= m["auc_class_matched"] <= 1 and 0 < m["client_auc_max_p"] <= 1
    assert res.arrays["client_members"].sum() == 200 and res.info["client_view"]["clients"] == 4


@pytest.mark.parametrize("name,config", [
    ("gen-distance", {"n_synthetic": 100}),
    ("gen-classifier", {"n_synthetic": 100, "k": 3}),
])
def test_generator_attacks_add_the_view_on_a_federated_generator(tmp_path, name, config):
    from test_fedavg_gan import TINY

    from defenses.fedavg_gan import FedAvgGAN, FedAvgGANConfig

    ctx = _ctx(tmp_path)
    rel = FedAvgGAN(make_config(FedAvgGANConfig, {**TINY, "clients": 4, "expected_clients_per_round": 2.0},
                                "fedavg-gan")).fit(ctx)
    cls = get_attack(name)
    atk = cls(make_config(cls.Config, {**config, "n_eval": 200, "n_boot": 20}, name))
    res = atk.run(_ctx(tmp_path), rel)
    m = res.metrics
    assert set(m) <= set(cls.metrics), set(m) - set(cls.metrics)
    assert m["clients_scored"] == 4 and 0 <= m["client_auc_min"] <= m["client_auc_max"] <= 1
    assert res.info["client_view"]["clients"] == 4


def test_feddpsd_client_teachers_get_the_view_and_record_shards_do_not(tmp_path):
    """FedDPSD (dpsd, one teacher per client) records its client split's recipe, so the view runs
    on its release and recomputes exactly the teachers' parts; the record partition (example
    unit, PATE shards) records none."""
    from bench.lib.federated import client_partition
    from defenses.dpsd import DPSD

    def ctx():
        env = Env(str(tmp_path / "run"), str(tmp_path / "cache"), "", "cpu", "test", progress=False)
        return CellContext(env, Cache(env.cache_dir), TASK, 1.0, 1e-5, 3, [], {}, {}, defense="dpsd")

    base = {"mode": "label", "iterations": 6, "batch_size": 16, "eval_every": 3, "latent_dim": 8,
            "generator_width": 8, "teachers": 5, "teacher_epochs": 1, "teacher_hidden": 8,
            "teacher_batch_size": 16}
    rel = DPSD(make_config(DPSD.Config, {**base, "teacher_partition": "dirichlet", "teacher_alpha": 0.3},
                           "dpsd")).fit(ctx())
    found = find_partition(rel.info)
    assert found["spec"] == {"clients": 5, "scheme": "dirichlet", "alpha": 0.3, "seed": 3}
    assign = client_of_members(TASK.members, found)
    rows = np.asarray(TASK.members.index)
    parts = client_partition(rows, TASK.members.y.numpy(), 5, "dirichlet", 0.3, 3)
    for i, p in enumerate(parts):
        assert set(rows[assign == i].tolist()) == set(rows[p].tolist())
    atk = LossThreshold(make_config(LossThreshold.Config, {"n_eval": 300, "n_boot": 20}, "loss-threshold"))
    res = atk.run(ctx(), rel)
    assert res.info["client_view"]["clients"] == 5 and res.arrays["client_members"].sum() == 300
    rec = DPSD(make_config(DPSD.Config, {**base, "teacher_partition": "record"}, "dpsd")).fit(ctx())
    assert find_partition(rec.info) is None
    assert "client_view" not in atk.run(ctx(), rec).info
