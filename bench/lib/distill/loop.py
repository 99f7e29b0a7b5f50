"""The alternating transcription loop of the data-free distillation defenses: :func:`transcribe`
(generator batch -> teacher and student logits -> private annotation -> student step ->
generator step with the student as discriminator), its :class:`LoopConfig`, and the student's
and generator's losses on the private annotation."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from bench.lib.audit.canaries import canary_answer
from bench.lib.distill.canaries import QueryCanaries
from bench.lib.distill.losses import dafl_losses
from bench.lib.distill.nets import logits_and_features
from bench.lib.train import accuracy, memory_layout


@dataclass
class LoopConfig:
    iterations: int
    batch_size: int
    lr_student: float
    lr_generator: float
    w_oh: float
    w_ie: float
    w_act: float
    w_adv: float
    eval_every: int
    select_on_val: bool
    student_optimizer: str = "adam"
    #: one generator step every ``generator_every`` iterations (the generator step costs more than
    #: the rest of an iteration on a CPU; the student sees a fresh batch every iteration anyway)
    generator_every: int = 1
    #: decay of an exponential moving average of the student's weights (0 = off); the average is
    #: what gets evaluated, selected and released -- it averages the zero-mean DP noise of the
    #: updates (post-processing of DP outputs)
    ema: float = 0.0
    #: iterations before the first generator step (the student first learns on the initial
    #: generator's samples; the generator's only guide is the student)
    generator_warmup: int = 0
    #: run the three networks in the channels_last memory format (same values up to rounding)
    channels_last: bool = True
    #: query the teacher on every ``query_every``-th iteration only (1 = every iteration). The
    #: iterations in between are *replay* steps: the student takes a step on a batch drawn from the
    #: synthetic images already annotated and their released annotations (post-processing of DP
    #: outputs, no privacy cost); the generator does not move on them (its images would need new
    #: annotations). Used by the ensemble mechanisms, whose query budget is small
    query_every: int = 1
    #: on replay steps, also take a generator step on the DAFL losses against the student (no
    #: teacher and no annotation involved: no privacy cost), so the next query batch comes from a
    #: generator that kept following the student
    generator_on_replay: bool = False


def student_loss_fn(mode: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """data mode: MSE regression of the logits onto the detached DP target (sum over classes,
    mean over the batch); label mode: cross-entropy on the RR labels."""
    if mode == "data":
        return lambda s, target: ((s - target) ** 2).sum(1).mean() / 2
    return lambda s, labels: F.cross_entropy(s, labels)


def adversarial_loss_fn(mode: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The generator's adversarial (competitive) term, built from DP quantities only: the generator
    maximizes the student's disagreement with the private annotation of the same latent codes.
    In data mode the gradient of -1/2 ||s - target||^2 w.r.t. the images is linear in the DP
    noise, i.e. an unbiased noisy version of "move to where the normalized distillation gradient
    is large"."""
    base = student_loss_fn(mode)
    return lambda s, target: -base(s, target)


def transcribe(*, teacher: nn.Module, student: nn.Module, generator: nn.Module,
               annotate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mode: str, cfg: LoopConfig,
               rng: torch.Generator, device, val=None, on_query: Callable[[int], None] = lambda it: None,
               on_eval: Callable[[int], dict] = lambda it: {}, progress=lambda it, **k: it,
               log: Callable[[str], None] = lambda m: None, canaries: Optional[QueryCanaries] = None) -> dict:
    """Alternate, ``cfg.iterations`` times: (1) a generator batch from N(0, I); (2) teacher and
    student logits; (3) private annotation (the only use of the teacher's output); (4) a student
    step towards the annotation; (5) a generator step with the (frozen) student as discriminator.
    Returns the history; ``student``/``generator`` hold the selected checkpoint on return."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    # channels_last: oneDNN's convolutions and max-pooling run on NHWC without the layout reorders
    # NCHW needs (1.4-2.0x per layer, forward + backward, on a CPU core; benchmarks/test_dpsd_loop.py
    # times the loop); the values are the same up to float rounding. All three networks go back to
    # the standard layout on return (the teacher is the shared cached release: same values, same
    # layout after)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    student.to(device).train()
    generator.to(device).train()
    with memory_layout(layout, teacher, student, generator):
        return _loop(teacher, student, generator, annotate, mode, cfg, rng, device, val, on_query, on_eval,
                     progress, log, canaries, layout)


def _loop(teacher, student, generator, annotate, mode, cfg, rng, device, val, on_query, on_eval, progress, log,
          canaries, layout) -> dict:
    if cfg.student_optimizer == "adam":
        opt_s = torch.optim.Adam(student.parameters(), lr=cfg.lr_student)
    else:
        opt_s = torch.optim.SGD(student.parameters(), lr=cfg.lr_student, momentum=0.9)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_generator)
    s_loss, adv_loss = student_loss_fn(mode), adversarial_loss_fn(mode)
    latent = generator.latent_dim
    averaged = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        averaged = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema))
    released = averaged.module if averaged is not None else student
    hist: dict = {"iteration": [], "val_acc": [], "student_loss": [], "epsilon": [], "seconds": []}
    best = [-1.0, None, None, -1]  # val acc, student state, generator state, iteration (updated in place)
    t0 = time.time()
    run_loss = 0.0
    use_generator = any(w != 0 for w in (cfg.w_oh, cfg.w_ie, cfg.w_act, cfg.w_adv))
    replay_x: list[torch.Tensor] = []
    replay_t: list[torch.Tensor] = []
    for it in progress(range(1, cfg.iterations + 1), desc="transcription"):
        if cfg.query_every > 1 and (it - 1) % cfg.query_every != 0:
            # replay step: the student on released annotations of earlier queries (no teacher call)
            bx, bt = torch.cat(replay_x), torch.cat(replay_t)
            idx = torch.randint(len(bx), (cfg.batch_size,), generator=rng)
            x = bx[idx].to(device, memory_format=layout)
            run_loss += _student_step(s_loss(student(x), bt[idx].to(device)), opt_s, averaged, student)
            if cfg.generator_on_replay and use_generator:
                z = torch.randn(cfg.batch_size, latent, generator=rng).to(device)
                _generator_step(cfg, student, generator(z), opt_g)
            _evaluate(it, cfg, released, student, generator, val, device, on_eval, hist, t0, run_loss, log, best)
            run_loss = 0.0 if it % cfg.eval_every == 0 or it == cfg.iterations else run_loss
            continue
        z = torch.randn(cfg.batch_size, latent, generator=rng).to(device)
        g_step = use_generator and it > cfg.generator_warmup and (it - cfg.generator_warmup) % cfg.generator_every == 0
        # (1)-(2): synthetic batch, teacher and student logits. On an iteration with a generator
        # step the batch keeps its graph and step (5) back-propagates through this very forward
        # (the generator is unchanged in between, so a second forward would give the same images;
        # DAFL's loop also runs the generator once per iteration)
        with torch.set_grad_enabled(g_step):
            xg = generator(z)
        x = xg.detach()
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        n_batch = len(x)
        if canaries is not None and it == canaries.iteration:
            # audit refit only: the canary queries join this batch (answered once, like every query)
            xc = canaries.x.to(device, memory_format=layout)
            with torch.no_grad():
                tc = teacher(xc)
            inc = canaries.included.to(device)[:, None]
            answer = torch.where(inc, canary_answer(tc), tc)
            t_logits = torch.cat([t_logits, answer])
            s_logits = torch.cat([s_logits, student(xc)])
        # (3): private annotation -- the only use of the teacher's output
        target = annotate(s_logits.detach(), t_logits)
        if canaries is not None and it == canaries.iteration:
            sc, tgt = s_logits[n_batch:].detach(), target[n_batch:].detach()
            rec = {"iteration": it, "included": canaries.included.cpu(), "student_logits": sc.cpu(),
                   "released": tgt.cpu(), "label_out": tc.argmax(1).cpu(),
                   "label_in": canary_answer(tc).argmax(1).cpu()}
            if mode == "data":
                rec["clean_out"] = annotate.clean(sc, tc).cpu()
                rec["clean_in"] = annotate.clean(sc, canary_answer(tc)).cpu()
                rec["noise_std"] = float(annotate.noise_multiplier * annotate.bound)
                rec["target_step"] = float(annotate.step)
            canaries.record = rec
            del tc, answer
        del t_logits
        on_query(it)
        if cfg.query_every > 1:  # keep the released annotations for the replay steps
            replay_x.append(x.detach().cpu().contiguous())
            replay_t.append(target[:n_batch].detach().cpu())
        # (4): student update on the DP annotation
        loss = s_loss(s_logits, target)
        target = target[:n_batch]  # the generator's adversarial term pairs with its own batch only
        run_loss += _student_step(loss, opt_s, averaged, student)
        # (5): generator update, student frozen as discriminator
        if g_step:
            _generator_step(cfg, student, xg, opt_g, (adv_loss, target) if cfg.w_adv else None)
        _evaluate(it, cfg, released, student, generator, val, device, on_eval, hist, t0, run_loss, log, best)
        run_loss = 0.0 if it % cfg.eval_every == 0 or it == cfg.iterations else run_loss
    student.load_state_dict(best[1])
    generator.load_state_dict(best[2])
    student.eval()
    generator.eval()
    hist["selected_iteration"] = best[3]
    hist["selected_val_acc"] = best[0]
    hist["selected_by"] = "val_acc on ctx.task.val (private validation split)" if cfg.select_on_val else "last_iterate"
    return hist


def _student_step(loss: torch.Tensor, opt_s, averaged, student: nn.Module) -> float:
    """One optimizer step of the student on ``loss`` (and of its moving average); the loss value."""
    opt_s.zero_grad(set_to_none=True)
    loss.backward()
    opt_s.step()
    if averaged is not None:
        averaged.update_parameters(student)
    return float(loss.detach())


def _generator_step(cfg, student: nn.Module, xg: torch.Tensor, opt_g, adv=None) -> None:
    """One generator step on its images ``xg`` (with their graph), the student frozen as
    discriminator: the DAFL losses, plus ``w_adv`` x the adversarial term when ``adv`` =
    (adversarial loss, the DP annotation of these images) is given."""
    for p in student.parameters():
        p.requires_grad_(False)
    logits, feats = logits_and_features(student, xg)
    parts = dafl_losses(logits, feats)
    g_loss = cfg.w_oh * parts["oh"] + cfg.w_ie * parts["ie"] + cfg.w_act * parts["a"]
    if adv is not None:
        g_loss = g_loss + cfg.w_adv * adv[0](logits, adv[1])
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    for p in student.parameters():
        p.requires_grad_(True)


def _evaluate(it, cfg, released, student, generator, val, device, on_eval, hist, t0, run_loss, log, best) -> None:
    """On an evaluation iteration: validation accuracy of the released student, the history row,
    and the selected checkpoint (``best``, updated in place)."""
    if not (it % cfg.eval_every == 0 or it == cfg.iterations):
        return
    va = accuracy(released, val, device) if val is not None else float("nan")
    student.train()
    extra = on_eval(it)
    hist["iteration"].append(it)
    hist["val_acc"].append(va)
    hist["student_loss"].append(run_loss / (cfg.eval_every if it % cfg.eval_every == 0 else max(1, it % cfg.eval_every)))
    hist["epsilon"].append(extra.get("epsilon"))
    hist["seconds"].append(time.time() - t0)
    log(f"iter {it}: val_acc={va:.4f} eps={extra.get('epsilon')}")
    if not cfg.select_on_val or va > best[0]:
        best[:] = [va, copy.deepcopy(released.state_dict()), copy.deepcopy(generator.state_dict()), it]
