"""The per-client view of a membership attack on a federated (or client-partitioned) release:
whose data leaks most?

For each client c the evaluated members that belong to c are scored against **all** evaluated
non-members, reweighted to c's class mix: under label skew (Dirichlet partitions) a client's
members are mostly a few classes, and comparing them with the pooled non-members would measure
how hard those classes are, not membership. With non-member weights w(y) = share_c(y) /
share_nonmembers(y) the AUC of client c is

    AUC_c = mean over members i of c of  sum_k share_c(k) * F_k(s_i),
    F_k(s) = (#{non-members of class k scoring < s} + #{... = s} / 2) / #{non-members of class k},

which is sklearn's ``roc_auc_score`` with those sample weights (ties count one half; checked in
``tests/test_client_view.py``). Members of a class no non-member has are left out. ``auc_class_matched`` is the same statistic
for all evaluated members together: the attack's AUC once the members' and non-members' class
mixes are made equal. A pooled AUC above it is (in part) the two samples' class mixes differing,
which a class-dependent score turns into an apparent signal (measured on an under-trained FedAvg
model, docs/methods/membership.md).

"Client 3 leaks most" is a maximum over clients and is biased upwards even when no client is
special, so the view also tests it: the client labels are permuted among the evaluated members
**within each class** (every client keeps its class mix and size), and ``client_auc_max_p`` =
(1 + #{permutations with max_c AUC_c >= the observed max}) / (1 + permutations). A small p says
the most exposed client's members are more exposed than their class mix explains; a large one says
the spread between clients is what chance gives. Clients with fewer than ``min_members`` evaluated
members are not scored (their AUC is NaN) and do not enter the maximum.
"""

from __future__ import annotations

import numpy as np

#: the metrics the view adds to an attack's result (only on a partitioned release)
CLIENT_VIEW_METRICS = ("auc_class_matched", "clients_scored", "client_auc_max", "client_auc_min",
                       "client_auc_max_p", "client_members_min")


def class_cdf_matrix(member_scores: np.ndarray, nonmember_scores: np.ndarray, nonmember_classes: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """G[i, k] = F_k(s_i): the mid-rank share of class-k non-members scoring below member i
    (NaN for a class without non-members)."""
    G = np.full((len(member_scores), num_classes), np.nan)
    for k in range(num_classes):
        s = np.sort(nonmember_scores[nonmember_classes == k])
        if len(s) == 0:
            continue
        lo = np.searchsorted(s, member_scores, side="left")
        hi = np.searchsorted(s, member_scores, side="right")
        G[:, k] = (lo + 0.5 * (hi - lo)) / len(s)
    return G


def per_client_view(scores: np.ndarray, labels: np.ndarray, classes: np.ndarray, client: np.ndarray,
                    n_clients: int, *, min_members: int = 10, permutations: int = 1000,
                    seed: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray], dict]:
    """Metrics, arrays and info of the per-client view (module docstring).

    ``scores``/``labels`` (1 = member)/``classes`` describe the evaluated set; ``client`` is each
    evaluated member's client (ignored for non-members)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    classes = np.asarray(classes).astype(np.int64)
    client = np.asarray(client).astype(np.int64)
    K = int(classes.max()) + 1
    G = class_cdf_matrix(scores[labels], scores[~labels], classes[~labels], K)
    m_cls, m_cli = classes[labels], client[labels]
    keep = ~np.isnan(G[np.arange(len(G)), m_cls]) & (m_cli >= 0) & (m_cli < n_clients)
    G, m_cls, m_cli = np.nan_to_num(G[keep]), m_cls[keep], m_cli[keep]
    counts = np.zeros((n_clients, K))
    np.add.at(counts, (m_cli, m_cls), 1.0)
    n_c = counts.sum(1)
    share = counts / np.maximum(n_c, 1)[:, None]  # (C, K): each client's class mix
    H = G @ share.T  # (members, C): member i scored against non-members reweighted to client c's mix
    scored = n_c >= min_members

    def aucs(assign: np.ndarray) -> np.ndarray:
        tot = np.zeros(n_clients)
        np.add.at(tot, assign, H[np.arange(len(H)), assign])
        return tot / np.maximum(n_c, 1)

    auc = np.where(scored, aucs(m_cli), np.nan)
    # all members as one client: the pooled AUC with the non-members reweighted to the members' mix
    pooled_share = counts.sum(0) / max(counts.sum(), 1.0)
    metrics: dict[str, float] = {"auc_class_matched": float((G @ pooled_share).mean()) if len(G) else float("nan"),
                                 "clients_scored": float(scored.sum())}
    info = {"clients": int(n_clients), "min_members": int(min_members), "permutations": int(permutations),
            "weights": "non-members reweighted to each client's class mix",
            "test": "max over scored clients, client labels permuted within classes"}
    if scored.any():
        obs = float(np.nanmax(auc))
        rng = np.random.default_rng([int(seed), 0xC11E])
        exceed = 0
        by_class = [np.flatnonzero(m_cls == k) for k in range(K)]
        perm = m_cli.copy()
        for _ in range(int(permutations)):
            for idx in by_class:
                if len(idx) > 1:
                    perm[idx] = m_cli[idx][rng.permutation(len(idx))]
            exceed += float(np.max(aucs(perm)[scored])) >= obs - 1e-12
        metrics.update({"client_auc_max": obs, "client_auc_min": float(np.nanmin(auc)),
                        "client_auc_max_p": (1.0 + exceed) / (1.0 + permutations),
                        "client_members_min": float(n_c[scored].min())})
        info["most_exposed_client"] = int(np.nanargmax(auc))
    arrays = {"client_auc": auc, "client_members": n_c}
    return metrics, arrays, info


def client_view(task, release_info: dict, evaluated, scores: np.ndarray, labels: np.ndarray, *, seed: int,
                permutations: int = 1000, min_members: int = 10):
    """The per-client view of one attack's scores on ``evaluated`` (the evaluated split in
    score order, with dataset rows), or None when the release records no client partition
    (``bench.lib.federated.find_partition``). When the partition cannot be recomputed on the
    task's members (fingerprint mismatch) the view is ``({}, {}, {"skipped": reason})``."""
    from bench.lib.federated import client_of_members, find_partition

    summary = find_partition(release_info)
    if summary is None or evaluated is None or evaluated.index is None:
        return None
    members = task.members
    assign = client_of_members(members, summary)
    if assign is None:
        return {}, {}, {"skipped": "the release's client partition does not recompute on the task's members "
                                   "(fingerprint mismatch); no per-client view"}
    rows = members.index if members.index is not None else np.arange(len(members))
    client_of_row = dict(zip(np.asarray(rows).tolist(), assign.tolist()))
    labels = np.asarray(labels).astype(bool)
    client = np.array([client_of_row.get(int(r), -1) if m else -1
                       for r, m in zip(np.asarray(evaluated.index).tolist(), labels)], dtype=np.int64)
    return per_client_view(scores, labels, evaluated.y.numpy(), client, int(summary["spec"]["clients"]),
                           min_members=min_members, permutations=permutations, seed=seed)
