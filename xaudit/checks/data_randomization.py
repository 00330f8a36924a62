"""Data randomization test (docs/protocols.md#14-data-randomization): the same architecture trained on one global
random permutation of the training labels (zoo spec ``random-labels``, cached; the model is refused
unless its card says the bug took: high train accuracy on the permuted labels, chance test accuracy).
The maps of the true-label model and of the random-label model are compared on the same test images,
with the same metrics, references and verdict rule as the parameter tests (one stage: stage 1 is the
random-label model).
"""
from __future__ import annotations

from typing import Any, Iterator

from xaudit.checks.base import CHECKS, ModelRef
from xaudit.checks.sanity import METRICS_NOTE, VERDICT_RULE, SanityCheck, SanityRun, Tested, resolve_params
from xaudit.core.errors import ConfigError


@CHECKS.register("data_randomization")
class DataRandomization(SanityCheck):
    """True-label model vs random-label model."""
    name = "data_randomization"
    bug = "random labels"
    extra_defaults = {"random_label_spec": "random-labels", "require_bug_took": True}
    description = ("Train the same architecture on permuted labels (random-labels) and compare its maps with the "
                   "true-label model's maps on the same test images: " + VERDICT_RULE + "." + METRICS_NOTE)

    def models(self, params: dict[str, Any], model_group: str, seed: int,
               world: dict[str, Any] | None = None) -> list[ModelRef]:
        p = resolve_params(self.name, dict(params or {}), self.extra_defaults)
        spec = p["random_label_spec"]
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"{self.name}.random_label_spec", f"must be a zoo spec name, got {spec!r}")
        return [*super().models(params, model_group, seed, world), ModelRef(spec, seed)]

    def tested(self, run: SanityRun) -> Iterator[Tested]:
        from xaudit import zoo

        spec = run.p["random_label_spec"]
        model, card = run.ctx.load_model(ModelRef(spec, run.ctx.seed))
        if run.p["require_bug_took"]:
            zoo.require_bug_took(card, what="data_randomization")
        run.random_label_card = card
        yield Tested(stage=1, block=spec, blocks=[], maps=run.explain_model(model))

    def extra_columns(self, run: SanityRun) -> dict[str, Any]:
        card = getattr(run, "random_label_card", None) or {}
        return {"compared_model": run.p["random_label_spec"],
                "random_label_train_accuracy": card.get("train_accuracy"),
                "random_label_test_accuracy": card.get("clean_accuracy")}
