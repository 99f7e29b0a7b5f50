"""``spine-plugin-fidelity``: do a released generator's samples carry their labels? (test plugin)

Samples n images from the release's ``generator`` and reports the released classifier's mean
top-class probability on them (``mean_confidence``) and, for a conditional generator, the fraction
it assigns to the sampled label (``label_agreement``); a release without a generator is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.api import Attack, AttackResult, register_attack
from bench.lib.generators import generator_of, sample_synthetic, skipped
from bench.lib.train import predict_logits


@dataclass
class PluginFidelityConfig:
    n: int = 200


@register_attack("spine-plugin-fidelity")
class PluginFidelity(Attack):
    """Test plugin: label agreement of a released generator's samples."""

    Config = PluginFidelityConfig
    kind = "generator"
    metrics = ("mean_confidence", "label_agreement", "n_synthetic")
    summary = ("mean_confidence",)

    def run(self, ctx, release) -> AttackResult:
        g = generator_of(release)
        if g is None:
            return skipped(ctx, "spine-plugin-fidelity", release)
        synth = sample_synthetic(g, self.config.n, ctx.seed)
        logits = predict_logits(release.model, synth.x, ctx.device)
        out = {"mean_confidence": float(logits.softmax(1).max(1).values.mean()), "n_synthetic": float(len(synth))}
        if int(synth.y.min()) >= 0:  # conditional: the sampled labels are known
            out["label_agreement"] = float((logits.argmax(1) == synth.y).float().mean())
        return AttackResult(out)
