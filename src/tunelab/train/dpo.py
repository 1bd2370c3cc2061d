"""`stage: dpo`: preference tuning on pairs (DPO, IPO, robust DPO, ORPO, SimPO) behind the objective seam.

    objective = Preference(pad_id=tok.pad_token_id, loss="sigmoid", beta=0.1, reference="adapters_off")
    module = objective.wrap(model)   # forward(**batch) -> (summed pair losses, pairs)

A micro-batch holds B pairs as 2B right-padded rows, chosen rows first (data/batching.py `collate_pairs`).
One forward pass gives every row's summed log-probability of its reply (models/logps.py, only reply
tokens are scored); the loss of each pair comes from train/preference.py, which matches TRL 1.16 term
for term (tests/train/test_alignment_parity.py). The loop divides the step's summed pair losses by the
step's pairs, so batch 8 x 1 and batch 1 x 8 accumulation steps give the same update, as for SFT.

The reference model never sits beside the policy:
- `cached` (the default, every method): each pair's reference log-probabilities are computed once,
  before training, by the model as loaded (a fresh LoRA adapter adds exactly zero, so for the LoRA
  family that is the base), and stored with the prepared data under a key of the data's fingerprint,
  the model's identity and precision (`with_reference_logps`); batches carry them as `ref_logps`. A
  step then is one forward and backward of the policy, and the cache serves every epoch, a resume,
  another variant or sweep trial on the same data and model, and every process;
- `adapters_off` (LoRA family, on request): the same weights with the adapters disabled, one no-grad
  forward of both sides in every step;
- ORPO and SimPO need no reference.

ORPO adds the chosen rows' negative log-likelihood, a mean over their *tokens* (every token after
the first, prompt included, as TRL computes it), to a mean over *pairs*: the step's count of those
tokens is the objective's fourth count, so the NLL term is normalised over the whole step too (with
one micro-batch this is TRL's number exactly).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..models.loss import LossModule
from .objectives import Metrics, Objective

NO_REFERENCE = ("orpo", "simpo")
STATS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy", "logps/chosen",
         "logps/rejected")


def reference_mode(loss: str, reference: str) -> str:
    """Which reference a run uses: none (orpo, simpo), else `reference`, where auto is cached for every method
    (a fresh adapter leaves the model equal to its base; tests/train/test_alignment.py checks cached equals
    adapters_off step by step); config.py refuses adapters_off without a LoRA-family method."""
    if loss in NO_REFERENCE:
        return "none"
    return "cached" if reference == "auto" else reference


class Preference(Objective):
    packing = False

    def __init__(self, *, pad_id: int, loss: str = "sigmoid", beta: float = 0.1, label_smoothing: float = 0.0,
                 simpo_gamma: float = 0.5, reference: str = "adapters_off", **_: Any):
        self.pad_id, self.loss, self.beta = pad_id, loss, beta
        self.label_smoothing, self.simpo_gamma, self.reference = label_smoothing, simpo_gamma, reference
        self.stats = Metrics()
        self.totals: torch.Tensor | None = None

    def lengths(self, ds: Any) -> list[int]:
        from ..data.batching import pair_lengths

        return pair_lengths(ds)

    def collate(self, ds: Any, units: list[list[int]]) -> dict[str, torch.Tensor]:
        from ..data.batching import collate_pairs

        idx = [i for u in units for i in u]
        rows = ds[idx]
        examples = [dict(zip(rows, values)) for values in zip(*rows.values())]
        batch = collate_pairs(examples, self.pad_id)
        if "ref_chosen_logps" in rows:
            batch["ref_logps"] = torch.tensor(rows["ref_chosen_logps"] + rows["ref_rejected_logps"],
                                              dtype=torch.float32)
        return batch

    def count(self, batch: dict[str, torch.Tensor]) -> tuple[int, ...]:
        """(pairs, input tokens, scored reply tokens, tokens of ORPO's NLL: every chosen token after the first)."""
        from ..data.batching import supervised_mask

        pairs = batch["input_ids"].shape[0] // 2
        chosen_tokens = int(batch["attention_mask"][:pairs].sum()) - pairs
        return pairs, int(batch["attention_mask"].sum()), int(supervised_mask(batch["labels"]).sum()), chosen_tokens

    def begin_step(self, totals: torch.Tensor) -> None:
        self.totals = totals.detach().double().cpu()

    def metrics(self, split: str, accelerator: Any) -> dict[str, float]:
        return self.stats.read(split, accelerator, STATS)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return PreferenceLoss(model, self)


class PreferenceLoss(LossModule):
    """The policy's pair losses, summed."""

    def __init__(self, model: torch.nn.Module, objective: Preference):
        super().__init__(model)
        self.objective = objective

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor,
                ref_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from ..data.batching import supervised_mask
        from ..data.render import IGNORE_INDEX
        from ..models.logps import per_row, token_logps
        from .preference import orpo_terms, preference_loss

        o = self.objective
        n = input_ids.shape[0]
        pairs = n // 2
        scored = labels
        if o.loss == "orpo":  # its NLL term covers every token of the chosen rows, prompt included (as TRL)
            scored = labels.clone()
            scored[:pairs] = torch.where(attention_mask[:pairs].bool(), input_ids[:pairs], IGNORE_INDEX)
        t = token_logps(self.model, input_ids, scored, attention_mask=attention_mask)
        reply = supervised_mask(labels)[supervised_mask(scored)]  # which scored positions are reply tokens
        sums = per_row(t.logps[reply], t.rows[reply], n)
        tokens = per_row(torch.ones_like(t.logps[reply]), t.rows[reply], n).detach()
        ref = None
        if o.loss not in NO_REFERENCE:
            if ref_logps is not None:
                ref = ref_logps.to(sums)
            elif o.reference == "adapters_off":
                with torch.no_grad(), self.model.disable_adapter():
                    r = token_logps(self.model, input_ids, labels, attention_mask=attention_mask)
                    ref = per_row(r.logps, r.rows, n)
            else:
                raise RuntimeError("dpo with a cached reference: the batch has no ref_logps (recipe.reference_logps)")
        common = dict(chosen_logps=sums[:pairs], rejected_logps=sums[pairs:], chosen_tokens=tokens[:pairs],
                      rejected_tokens=tokens[pairs:], beta=o.beta)
        if o.loss == "orpo":
            odds_sum, nll_sum = orpo_terms(**common, nll_logps=t.logps[t.rows < pairs])
            out = preference_loss("orpo", **common)
            # the NLL is a mean over the step's chosen tokens, the odds-ratio term a mean over its pairs;
            # the loop divides by pairs, so the NLL sum is scaled by pairs / NLL tokens of the step
            totals = o.totals if self.training and o.totals is not None else None
            step_pairs = totals[0].item() if totals is not None else pairs
            step_nll = totals[3].item() if totals is not None else float((t.rows < pairs).sum())
            loss_sum = odds_sum + nll_sum * (step_pairs / max(step_nll, 1.0))
        else:
            out = preference_loss(o.loss, **common, ref_chosen_logps=None if ref is None else ref[:pairs],
                                  ref_rejected_logps=None if ref is None else ref[pairs:],
                                  label_smoothing=o.label_smoothing, simpo_gamma=o.simpo_gamma)
            loss_sum = out.losses.sum()
        with torch.no_grad():
            ch, rj = out.chosen_rewards.detach().float(), out.rejected_rewards.detach().float()
            o.stats.add("train" if self.training else "val", pairs,
                        **{"rewards/chosen": ch.sum().item(), "rewards/rejected": rj.sum().item(),
                           "rewards/margins": (ch - rj).sum().item(), "rewards/accuracy": (ch > rj).sum().item(),
                           # as TRL logs them: summed reply log-probs, or per-token means for orpo/simpo
                           "logps/chosen": out.extras["logps/chosen"].float().sum().item(),
                           "logps/rejected": out.extras["logps/rejected"].float().sum().item()})
        return loss_sum, torch.tensor(pairs, device=loss_sum.device)


def _code_version() -> str:
    """What the reference values depend on besides data, model and precision: the source of the modules
    that compute them (models/logps.py, models/loss.py) and the torch and transformers versions."""
    import transformers

    from ..data.clean import content_key
    from ..models import logps, loss

    return content_key([Path(logps.__file__).read_text(), Path(loss.__file__).read_text(), torch.__version__,
                        transformers.__version__])


def with_reference_logps(model: torch.nn.Module, objective: Preference, prepared: Any, train_ds: Any, val_ds: Any, *,
                         model_id: str, accelerator: Any, batch_size: int) -> tuple[Any, Any]:
    """Both splits with columns `ref_chosen_logps` and `ref_rejected_logps`: every pair's summed reply
    log-probabilities under `model` as loaded (before any update, before a checkpoint is restored).

    Computed once and stored beside the prepared data (`reference-<key>.json` in its cache directory),
    under a key of the data's fingerprint, the model's identity, the precision and the code that computes
    them (`_code_version`), so a resumed run, a second variant or another process reads them back and a
    different model, or values an older tunelab, torch or transformers computed, never are."""
    import json

    from ..data.clean import content_key
    from ..models.logps import per_row, token_logps

    key = content_key([prepared.stats.get("data_fingerprint"), model_id, accelerator.mixed_precision,
                       str(next(model.parameters()).dtype), _code_version()])[:16]
    path = Path(prepared.path) / f"reference-{key}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
    else:
        model.to(accelerator.device)
        was_training = model.training
        model.eval()
        saved = {}
        from tqdm.auto import tqdm

        bar = tqdm(total=len(train_ds) + len(val_ds), desc="reference log-probs", unit="pair",
                   disable=not accelerator.is_local_main_process)
        for name, ds in (("train", train_ds), ("validation", val_ds)):
            chosen, rejected = [], []
            for start in range(0, len(ds), batch_size):
                units = [[i] for i in range(start, min(start + batch_size, len(ds)))]
                batch = {k: v.to(accelerator.device) for k, v in objective.collate(ds, units).items()}
                n = batch["input_ids"].shape[0]
                with torch.no_grad(), accelerator.autocast():
                    t = token_logps(model, batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"])
                sums = per_row(t.logps, t.rows, n).double().cpu().tolist()
                chosen += sums[: n // 2]
                rejected += sums[n // 2:]
                bar.update(n // 2)
            saved[name] = {"chosen": chosen, "rejected": rejected}
        bar.close()
        model.train(was_training)
        if accelerator.is_main_process:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(saved))
            tmp.replace(path)
    out = []
    for name, ds in (("train", train_ds), ("validation", val_ds)):
        got = saved[name]
        if len(got["chosen"]) != len(ds):
            raise RuntimeError(f"{path}: {len(got['chosen'])} reference values for {len(ds)} {name} pairs")
        if len(ds):
            ds = ds.add_column("ref_chosen_logps", got["chosen"]).add_column("ref_rejected_logps", got["rejected"])
        out.append(ds)
    return out[0], out[1]
