"""Stacked teacher discriminators for PATE-style GANs (DataLens; reusable by G-PATE and others):
N tiny class-conditional discriminators stored as stacked parameter tensors (leading dimension
N) and trained with batched matmuls and one Adam, so thousands of teachers cost a few tensor ops.

* :class:`TeacherEnsemble`: conditional MLP discriminators (DCGAN-style label conditioning,
  optional batch normalisation and projection term);
* :class:`LinearTeacherEnsemble`: class-conditional linear / maxout discriminators;
* :class:`ConvTeacherEnsemble`: class-conditional one-conv discriminators (grouped convolution);
* :class:`MLPClassifierEnsemble`: stacked one-hidden-layer MLP *classifiers* (PATE's teachers and
  the ensemble teachers of the data-free distillation defenses), with
  :func:`teacher_batches_per_epoch`, the shard-size-independent schedule they train on;
* :func:`adam`: the optimizer both use (also PATE's stacked MLP teachers);
* :func:`standardize`: per-image standardisation of a teacher's input.

The discriminator ensembles share one contract: ``logits(x, y, mask, sl)``, ``train_step(x, y, mask)`` (one
GAN discriminator step of every teacher on its own shard) and ``image_grads(x, y, sl)`` (each
teacher's gradient of the non-saturating generator loss w.r.t. the images: what TopAgg votes on).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def adam(params, lr: float, beta1: float, weight_decay: float = 0.0):
    """Adam (beta2 0.999, eps 1e-8 as TF's; decoupled weight decay when ``weight_decay`` > 0),
    the fused CPU kernel when this torch has it (same update, several times faster on the stacked
    teacher tensors)."""
    cls = torch.optim.AdamW if weight_decay > 0 else torch.optim.Adam
    kw = dict(lr=lr, betas=(beta1, 0.999), eps=1e-8, weight_decay=weight_decay)
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return cls(params, **kw)


class TeacherEnsemble:
    """N conditional MLP discriminators, stored as stacked tensors (leading dimension N):
    D_i(x, y) = w2_i . lrelu(BN_i(W1_i x + U1_i[y] + b1_i)) + u2_i[y] + b2_i, i.e. the one-hot label
    concatenated to the input and to the hidden layer as in DCGAN's conditional discriminator,
    with batch normalisation of the hidden layer computed over the batch being scored (real and
    fake batches separately, training-mode statistics, as DataLens' TF discriminator does).
    One Adam over the stacked tensors is N independent Adams (Adam is elementwise and the loss
    is a sum over teachers). Initialisation N(0, 0.02) as DCGAN-tensorflow's ``linear``."""

    def __init__(self, n: int, dim: int, num_classes: int, hidden: int, generator: torch.Generator,
                 lr: float = 1e-3, beta1: float = 0.5, device="cpu", batch_norm: bool = False,
                 input_norm: bool = True, projection: bool = True, weight_decay: float = 0.0):
        def init(*shape):
            return (torch.randn(*shape, generator=generator) * 0.02).to(device).requires_grad_(True)

        def const(v, *shape):
            return torch.full(shape, float(v), device=device, requires_grad=True)

        self.n, self.dim, self.K, self.h, self.bn, self.input_norm = n, dim, num_classes, hidden, batch_norm, input_norm
        self.W1 = init(n, dim, hidden)
        self.U1 = init(n, num_classes, hidden)
        self.b1 = const(0, n, 1, hidden)
        self.gamma, self.beta = const(1, n, 1, hidden), const(0, n, 1, hidden)
        self.w2 = init(n, hidden, 1)
        self.E = init(n, num_classes, hidden)  # projection-discriminator class embedding
        self.u2 = init(n, num_classes, 1)
        self.b2 = const(0, n, 1, 1)
        self.params = [self.W1, self.U1, self.b1, self.w2, self.u2, self.b2]
        if projection:
            self.params.append(self.E)
        self.projection = projection
        if batch_norm:
            self.params += [self.gamma, self.beta]
        self.opt = adam(self.params, lr, beta1, weight_decay)

    @staticmethod
    def _p(t: torch.Tensor, sl: slice) -> torch.Tensor:
        # the full tensor itself when sl covers everything (a slice would cost a full-size
        # zero-filled gradient buffer per backward)
        return t if sl == slice(None) else t[sl]

    def _norm(self, pre: torch.Tensor, mask: Optional[torch.Tensor], sl) -> torch.Tensor:
        """Batch normalisation over dim 1 (masked rows excluded), per teacher and unit."""
        if not self.bn:
            return pre
        if mask is None:
            mean = pre.mean(1, keepdim=True)
            var = pre.var(1, unbiased=False, keepdim=True)
        else:
            m = mask.unsqueeze(-1).to(pre.dtype)
            cnt = m.sum(1, keepdim=True).clamp_min(1)
            mean = (pre * m).sum(1, keepdim=True) / cnt
            var = (((pre - mean) ** 2) * m).sum(1, keepdim=True) / cnt
        return (pre - mean) / torch.sqrt(var + 1e-5) * self._p(self.gamma, sl) + self._p(self.beta, sl)

    def _pre(self, x: torch.Tensor, y: torch.Tensor, sl) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (n, M, dim) per teacher or (M, dim) shared; y: (n, M) or (M,) -> (n, M, h), y (n, M)."""
        W1 = self._p(self.W1, sl)
        n = W1.shape[0]
        if self.input_norm:  # per-image standardisation: scores blind to global brightness/contrast
            x = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-3)
        xw = torch.matmul(x, W1) if x.dim() == 3 else torch.matmul(x.unsqueeze(0), W1)
        if y.dim() == 1:
            y = y.unsqueeze(0).expand(n, -1)
        uy = torch.gather(self._p(self.U1, sl), 1, y.unsqueeze(-1).expand(-1, -1, self.h))
        return xw + uy + self._p(self.b1, sl), y

    def _head(self, pre: torch.Tensor, y: torch.Tensor, mask, sl) -> torch.Tensor:
        h = F.leaky_relu(self._norm(pre, mask, sl), 0.2)
        out = torch.matmul(h, self._p(self.w2, sl)).squeeze(-1)
        if self.projection:  # + e_y . h (Miyato & Koyama 2018): a class-specific input gradient
            out = out + (h * torch.gather(self._p(self.E, sl), 1, y.unsqueeze(-1).expand(-1, -1, self.h))).sum(-1)
        return out + torch.gather(self._p(self.u2, sl).squeeze(-1), 1, y) + self._p(self.b2, sl).view(-1, 1)

    def logits(self, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None,
               sl=slice(None)) -> torch.Tensor:
        """Scores of one batch per teacher (batch statistics over that batch)."""
        pre, y = self._pre(x, y, sl)
        return self._head(pre, y, mask, sl)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
        """One Adam step of every teacher on its standard GAN discriminator loss: masked mean BCE of
        its real shard (label 1) and of its fakes (label 0). ``x`` (N, 2M, dim) holds each
        teacher's M (padded) real rows, then its M fakes; ``y`` (N, M) the real labels (the fakes
        are generated with the same labels); ``mask`` (N, M) the real rows that exist. One
        batched matmul for both halves; batch statistics per half."""
        self.opt.zero_grad(set_to_none=True)
        M = y.shape[1]
        m = mask.float()
        cnt = m.sum(1).clamp_min(1)
        pre, _ = self._pre(x, torch.cat([y, y], 1), slice(None))
        lr_ = self._head(pre[:, :M], y, mask, slice(None))
        lf = self._head(pre[:, M:], y, mask, slice(None))
        per = ((F.softplus(-lr_) * m).sum(1) + (F.softplus(lf) * m).sum(1)) / cnt
        loss = per.sum()
        loss.backward()
        self.opt.step()
        return float(loss.detach()) / self.n

    def image_grads(self, x: torch.Tensor, y: torch.Tensor, sl=slice(None)) -> torch.Tensor:
        """g_i = -d L_G^(i) / d x_j for every teacher i (of ``sl``) and image j, with L_G^(i) the
        mean over the B images of the non-saturating generator loss softplus(-D_i(x_j, y_j)),
        the batch scored together (DataLens' ``img_grads``). x: (B, dim) shared, y: (B,) ->
        (n, B, dim). Teacher parameters get no gradient."""
        n = self._p(self.W1, sl).shape[0]
        xi = x.detach().unsqueeze(0).expand(n, -1, -1).clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.softplus(-self.logits(xi, y, None, sl)).mean(1).sum()
            (g,) = torch.autograd.grad(loss, xi)
        return -g


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation over the last dimension (zero mean, unit variance)."""
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-6)


class LinearTeacherEnsemble:
    """N class-conditional linear discriminators: D_i(x, y) = V_i[:, y] . s(x) + c_i[y] (logistic
    regression, one weight vector per class), or with ``pieces`` R > 1 maxout discriminators
    D_i(x, y) = max_r (V_i[:, y, r] . s(x) + c_i[y, r]) (Goodfellow et al. 2013), whose input
    gradient depends on the image through the active piece; s = per-image standardisation when
    ``input_norm`` (the teacher is blind to a sample's global brightness and contrast, as DCGAN's
    batch-normalised discriminators are to the fake batch's channel statistics). Stacked
    tensors, one Adam (= N independent Adams). Trained with the GAN loss, a teacher's input
    gradient for a class-y image points from the generator's class-y fakes towards its own real
    class-y images."""

    def __init__(self, n: int, dim: int, num_classes: int, generator: torch.Generator, lr: float = 1e-3,
                 beta1: float = 0.5, device="cpu", input_norm: bool = False, weight_decay: float = 0.0,
                 pieces: int = 1):
        self.n, self.dim, self.K, self.input_norm, self.R = n, dim, num_classes, input_norm, int(pieces)
        self.V = (torch.randn(n, dim, num_classes * self.R, generator=generator) * 0.02).to(device).requires_grad_(True)
        self.c = torch.zeros(n, 1, num_classes * self.R, device=device, requires_grad=True)
        self.params = [self.V, self.c]
        self.opt = adam(self.params, lr, beta1, weight_decay)

    def logits(self, x: torch.Tensor, y: torch.Tensor, mask=None, sl=slice(None)) -> torch.Tensor:
        V = self.V if sl == slice(None) else self.V[sl]
        c = self.c if sl == slice(None) else self.c[sl]
        n = V.shape[0]
        if self.input_norm:
            x = standardize(x)
        s = (torch.matmul(x, V) if x.dim() == 3 else torch.matmul(x.unsqueeze(0), V)) + c
        if self.R > 1:  # maxout over the class's pieces
            s = s.view(*s.shape[:2], self.K, self.R).amax(-1)
        if y.dim() == 1:
            y = y.unsqueeze(0).expand(n, -1)
        return torch.gather(s, 2, y.unsqueeze(-1)).squeeze(-1)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
        """Same contract as :meth:`TeacherEnsemble.train_step`."""
        self.opt.zero_grad(set_to_none=True)
        M = y.shape[1]
        m = mask.float()
        cnt = m.sum(1).clamp_min(1)
        logit = self.logits(x, torch.cat([y, y], 1))
        per = ((F.softplus(-logit[:, :M]) * m).sum(1) + (F.softplus(logit[:, M:]) * m).sum(1)) / cnt
        loss = per.sum()
        loss.backward()
        self.opt.step()
        return float(loss.detach()) / self.n

    def image_grads(self, x: torch.Tensor, y: torch.Tensor, sl=slice(None)) -> torch.Tensor:
        """-d mean_j softplus(-D_i(x_j, y_j)) / d x_j for every teacher i of ``sl`` -> (n, B, dim)."""
        V = self.V if sl == slice(None) else self.V[sl]
        n = V.shape[0]
        xi = x.detach().unsqueeze(0).expand(n, -1, -1).clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.softplus(-self.logits(xi, y, None, sl)).mean(1).sum()
            (g,) = torch.autograd.grad(loss, xi)
        return -g


class ConvTeacherEnsemble:
    """N class-conditional convolutional discriminators as stacked tensors, evaluated as one
    grouped convolution (``groups`` = teachers): D_i(x, y) = V_i[:, y] . h_i(x, y) + c_i[y] with
    h_i(x, y) = lrelu_0.2(conv5x5/2_i(x) + u_i[y]) (``filters`` maps at half resolution). The
    per-class filter bias u_i[y] is what DCGAN's conditional discriminator gets from
    concatenating one-hot label maps to its input (away from the zero-padded border, where the
    concatenation's bias is cut); the head is linear per class as DCGAN's last layer. One conv
    layer instead of DataLens' conv stack with BN and a 1024-unit layer: the CPU measurement of
    what a convolutional teacher gives beside the maxout one (docs/methods/datalens.md). Stacked
    tensors, one Adam (= N independent Adams); N(0, 0.02) initialisation as DCGAN's."""

    def __init__(self, n: int, image_shape: tuple, num_classes: int, generator: torch.Generator,
                 lr: float = 1e-3, beta1: float = 0.5, device="cpu", filters: int = 4, weight_decay: float = 0.0):
        C, H, W = (int(v) for v in image_shape)
        self.n, self.K, self.C, self.H, self.W, self.f = n, num_classes, C, H, W, int(filters)
        self.dim = C * H * W
        self.Ho, self.Wo = (H + 1) // 2, (W + 1) // 2
        feat = self.f * self.Ho * self.Wo

        def init(*shape):
            return (torch.randn(*shape, generator=generator) * 0.02).to(device).requires_grad_(True)

        self.Wc = init(n, self.f, C, 5, 5)
        self.u = torch.zeros(n, num_classes, self.f, device=device, requires_grad=True)
        self.V = init(n, feat, num_classes)
        self.c = torch.zeros(n, 1, num_classes, device=device, requires_grad=True)
        self.params = [self.Wc, self.u, self.V, self.c]
        self.opt = adam(self.params, lr, beta1, weight_decay)

    def logits(self, x: torch.Tensor, y: torch.Tensor, mask=None, sl=slice(None)) -> torch.Tensor:
        """x: (n, M, dim) per teacher or (M, dim) shared; y: (n, M) or (M,) -> (n, M)."""
        Wc, u, V, c = (t if sl == slice(None) else t[sl] for t in (self.Wc, self.u, self.V, self.c))
        n = Wc.shape[0]
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(n, -1, -1)
        M = x.shape[1]
        if y.dim() == 1:
            y = y.unsqueeze(0).expand(n, -1)
        # (n, M, C*H*W) -> (M, n*C, H, W): teacher i's images are channel group i
        xin = x.reshape(n, M, self.C, self.H, self.W).permute(1, 0, 2, 3, 4).reshape(M, n * self.C, self.H, self.W)
        h = F.conv2d(xin, Wc.reshape(n * self.f, self.C, 5, 5), stride=2, padding=2, groups=n)
        h = h.view(M, n, self.f, self.Ho * self.Wo).permute(1, 0, 2, 3)  # (n, M, f, Ho*Wo)
        uy = torch.gather(u, 1, y.unsqueeze(-1).expand(-1, -1, self.f))  # (n, M, f)
        h = F.leaky_relu(h + uy.unsqueeze(-1), 0.2).reshape(n, M, -1)
        s = torch.matmul(h, V) + c  # (n, M, K)
        return torch.gather(s, 2, y.unsqueeze(-1)).squeeze(-1)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
        """Same contract as :meth:`TeacherEnsemble.train_step`."""
        self.opt.zero_grad(set_to_none=True)
        M = y.shape[1]
        m = mask.float()
        cnt = m.sum(1).clamp_min(1)
        logit = self.logits(x, torch.cat([y, y], 1))
        per = ((F.softplus(-logit[:, :M]) * m).sum(1) + (F.softplus(logit[:, M:]) * m).sum(1)) / cnt
        loss = per.sum()
        loss.backward()
        self.opt.step()
        return float(loss.detach()) / self.n

    def image_grads(self, x: torch.Tensor, y: torch.Tensor, sl=slice(None)) -> torch.Tensor:
        """-d mean_j softplus(-D_i(x_j, y_j)) / d x_j for every teacher i of ``sl`` -> (n, B, dim)."""
        n = self.Wc.shape[0] if sl == slice(None) else self.Wc[sl].shape[0]
        xi = x.detach().unsqueeze(0).expand(n, -1, -1).clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.softplus(-self.logits(xi, y, None, sl)).mean(1).sum()
            (g,) = torch.autograd.grad(loss, xi)
        return -g


class MLPClassifierEnsemble:
    """N one-hidden-layer ReLU MLP classifiers as stacked tensors (leading dimension N), trained
    with one Adam over the stacked tensors (= N independent Adams: the loss is a sum over
    teachers and Adam is elementwise). PyTorch's default Linear initialisation per teacher."""

    def __init__(self, n: int, dim: int, num_classes: int, hidden: int, generator: torch.Generator, lr: float,
                 device="cpu"):
        def unif(shape, fan_in):
            b = 1.0 / math.sqrt(fan_in)
            return ((torch.rand(*shape, generator=generator) * 2 - 1) * b).to(device).requires_grad_(True)

        self.n = n
        self.W1, self.b1 = unif((n, dim, hidden), dim), unif((n, 1, hidden), dim)
        self.W2, self.b2 = unif((n, hidden, num_classes), hidden), unif((n, 1, num_classes), hidden)
        self.params = [self.W1, self.b1, self.W2, self.b2]
        self.opt = adam(self.params, lr, 0.9)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, M, dim) per teacher, or (M, dim) shared -> (N, M, K)."""
        if x.dim() == 2:
            x = x.unsqueeze(0)
        h = F.relu(torch.matmul(x, self.W1) + self.b1)
        return torch.matmul(h, self.W2) + self.b2

    def fit(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, *, epochs: int, batch_size: int,
            generator: torch.Generator, progress=lambda it, **k: it) -> None:
        """Minibatch training of every teacher on its own shard, padded to the **public** slot
        capacity M (x (N, M, dim), y, mask (N, M)). Each epoch visits every teacher's shard once
        in a per-teacher random order (real examples first, padding last) in
        :func:`teacher_batches_per_epoch` (M, batch_size) steps: the schedule is a function of the
        public capacity, never of the realised shard sizes, so one member changes one teacher's
        data and nothing else (a batch that is all padding gives that teacher a zero gradient;
        its Adam step then moves by momentum only, whatever the other shards hold). The training
        loss is not recorded: it is a noise-free statistic of the members."""
        N, M, _ = x.shape
        for _ in progress(range(epochs), desc="pate teacher epochs", leave=False):
            # a random order of each teacher's real examples first, padding last
            keys = torch.rand(N, M, generator=generator) + (~mask).float() * 2
            order = keys.argsort(1)
            for b in range(teacher_batches_per_epoch(M, batch_size)):
                idx = order[:, b * batch_size:(b + 1) * batch_size]
                xb = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))
                yb = torch.gather(y, 1, idx)
                mb = torch.gather(mask, 1, idx).float()
                logit = self.logits(xb)
                ce = F.cross_entropy(logit.reshape(-1, logit.shape[-1]), yb.reshape(-1), reduction="none")
                per = (ce.view_as(mb) * mb).sum(1) / mb.sum(1).clamp_min(1)
                self.opt.zero_grad(set_to_none=True)
                per.sum().backward()
                self.opt.step()

    @torch.no_grad()
    def votes(self, x: torch.Tensor, num_classes: int, chunk: int = 500) -> torch.Tensor:
        """Vote histograms (Q, K) of the teachers' argmax predictions on shared queries x (Q, dim)."""
        out = []
        for a in range(0, len(x), chunk):
            pred = self.logits(x[a:a + chunk]).argmax(-1)  # (N, q)
            out.append(F.one_hot(pred, num_classes).sum(0).float())
        return torch.cat(out)


def teacher_batches_per_epoch(capacity: int, batch_size: int) -> int:
    """Optimizer steps per teacher epoch: ceil(capacity / batch_size), with ``capacity`` the
    public slot capacity of a shard (:func:`bench.lib.synthetic.partition.shard_capacity`), so that adding or
    removing a member never changes any teacher's number of steps."""
    return max(1, math.ceil(int(capacity) / int(batch_size)))
