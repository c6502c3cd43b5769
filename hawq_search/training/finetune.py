"""The fine-tuning job behind ``hawq-search finetune``: QAT of a plan on the training split,
then the run directory gets ``finetuned.pt`` (a plain checkpoint of the float model with the
trained weights), ``plan.json`` with the learned scales and clips, and ``summary.json`` with
``top1.before`` (PTQ) and ``top1.after`` on the same evaluation images."""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from hawq_search.core.exceptions import UserInputError
from hawq_search.data.datasets import Batches, load_subset
from hawq_search.evaluation import top1
from hawq_search.files import jsonable, write_json
from hawq_search.inputs import dataset_name
from hawq_search.pipeline import Pipeline
from hawq_search.plan import Plan, apply_plan
from hawq_search.progress import progress_bar
from hawq_search.training.distributed import DistContext, init_from_env
from hawq_search.training.options import FinetuneOptions
from hawq_search.training.qat_model import build_qat_model, export_plan, float_state_dict
from hawq_search.training.schedules import channel_order, make_phases
from hawq_search.training.trainer import steps_per_epoch, train

__all__ = ["CHECKPOINT", "FINETUNED", "finetune_job", "training_data"]

CHECKPOINT = "finetune-state.pt"
FINETUNED = "finetuned.pt"


def training_data(pipe: Pipeline, size: int) -> Batches:
    """``size`` seeded train images (0 = all): in memory up to 20,000, else streamed."""
    c = pipe.config
    return load_subset(
        dataset_name(c, pipe.loaded), c.data_dir, "train", pipe.loaded.preprocess, size, c.seed,
        in_memory=0 < size <= 20_000, num_workers=c.num_workers, progress=c.progress,
        max_classes=pipe.loaded.num_classes, size_param="train_size",
    )  # fmt: skip


def _scores(pipe: Pipeline, plan: Plan) -> dict:
    """Each quantized channel's predicted loss increase at its planned bits."""
    table = pipe.sensitivity()
    missing = sorted({b for lp in plan.layers for b in lp.w_bits if b < 16} - set(table.w_bits))
    if missing:
        raise UserInputError(
            f"order sensitivity needs sensitivities at the planned bits {missing}: add them to "
            "wbits, or use order random",
            params=("wbits", "order"),
        )
    col = {b: i for i, b in enumerate(table.w_bits)}
    return {
        lp.name: [float(table.weight[lp.name][c, col[b]]) if b < 16 else 0.0
                  for c, b in enumerate(lp.w_bits)]
        for lp in plan.layers
    }  # fmt: skip


def _fingerprint(plan: Plan, opts: FinetuneOptions, n: int) -> dict:
    d = {k: v for k, v in opts.to_dict().items() if k != "resume"}
    d["plan_bits"] = json.dumps([[lp.name, lp.w_bits, lp.a_bits] for lp in plan.layers])
    d["train_images"] = n
    return d


def finetune_job(pipe: Pipeline, plan: Plan, opts: FinetuneOptions, *,
                 train_data: Batches | None = None, plan_path: str | Path | None = None,
                 on_epoch_end=None) -> dict:  # fmt: skip
    """Fine-tune ``plan`` on the pipeline's model; write the run directory; return the summary."""
    opts.validate()
    ctx = _join(pipe, opts)  # torchrun: the process group (else a no-op context)
    out = _run_dir(pipe, ctx)
    qmodel = build_qat_model(pipe.model, plan)  # PlanMismatchError before any work
    data = train_data if train_data is not None else training_data(pipe, opts.train_size)
    spe = steps_per_epoch(len(data), opts.batch_size)
    ranked = None
    if opts.schedule == "gradual":
        if ctx.is_main:  # sensitivities once (cached in out); every process takes this order
            scores = _scores(pipe, plan) if opts.order != "random" else None
            ranked = channel_order(plan, opts.order, scores, seed=opts.seed)
        ranked = ctx.broadcast(ranked)
    phases = make_phases(plan, opts.schedule, opts.epochs * spe, ranked=ranked,
                         stages=opts.stages, ladder_top=opts.ladder_top, cycles=opts.cycles,
                         final_share=opts.final_share)  # fmt: skip
    learner = bp = None
    if opts.learn_bits:
        from hawq_search.training.learned_plan import make_learner

        learner, bp = make_learner(pipe, plan, opts, ctx)
    before = pipe.top1(plan, "plan before fine-tuning") if ctx.is_main else None  # rank 0 scores
    fp = pipe.top1(None, "float") if ctx.is_main else None
    teacher = copy.deepcopy(pipe.model).eval() if opts.kd else None
    t0 = time.perf_counter()
    with progress_bar(pipe.config.progress and ctx.is_main, opts.epochs * spe * opts.batch_size,
                      "fine-tuning", "img") as bar:  # fmt: skip
        result = train(qmodel, teacher, data, phases, opts, pipe.runtime, out / CHECKPOINT,
                       _fingerprint(plan, opts, len(data)), progress=bar,
                       on_epoch_end=on_epoch_end, learner=learner)  # fmt: skip
    wall = time.perf_counter() - t0
    if learner is not None and ctx.active:  # a divergent process would have trained a mix
        mine = learner.w_choice.tolist()
        if ctx.broadcast(mine) != mine:
            raise RuntimeError(f"rank {ctx.rank} learned other widths than rank 0")
    if not ctx.is_main:  # rank 0 writes the run directory; the others wait for its summary
        return _finish(ctx, None)
    info = {"schedule": opts.schedule, "epochs": opts.epochs, "options": opts.to_dict(),
            "phases": [p.name for p in phases], "train_source": data.source,
            "train_images": len(data)}  # fmt: skip
    if learner is not None:
        plan, info["learn_bits"] = _learned_plan(qmodel, bp, learner)
    trained = export_plan(qmodel, plan, info)
    state = float_state_dict(qmodel, pipe.model)
    torch.save(state, out / FINETUNED)
    if plan_path is not None and Path(plan_path).resolve() == (out / "plan.json").resolve():
        shutil.copyfile(out / "plan.json", out / "plan-before-finetune.json")
    trained.save(out / "plan.json")
    after = _after_top1(pipe, trained, state)
    summary = _summary(pipe, opts, result, wall, {"fp": fp, "before": before, "after": after})
    summary["finetune"].update(train_images=len(data), train_source=data.source)
    if "learn_bits" in info:
        summary["finetune"]["learn_bits"] = {
            k: v for k, v in info["learn_bits"].items() if k != "groups"
        }
    write_json(out / "summary.json", summary)
    return _finish(ctx, summary)


def _learned_plan(qmodel, bp: Pipeline, learner) -> tuple[Plan, dict]:
    """The exact solver's snap of the learned widths (the model moved onto it if it differs)."""
    from hawq_search.training.learned_plan import snap_plan
    from hawq_search.training.qat_model import lsq_layers

    snapped, report = snap_plan(bp, learner)
    layers = lsq_layers(qmodel)
    for lp in snapped.layers:
        if layers[lp.name].bits_now.tolist() != list(lp.w_bits):
            layers[lp.name].set_bits(torch.tensor(lp.w_bits))
    report.update(learner.report())
    return snapped, report


def _join(pipe: Pipeline, opts: FinetuneOptions) -> DistContext:
    """This process's place under torchrun (a single-process context without it), after the
    checks distributed training adds."""
    ctx = init_from_env(pipe.runtime.device)
    try:
        ctx.local_batch(opts.batch_size)  # an equal share of every batch per process
    except UserInputError:
        ctx.close()
        raise
    return ctx


def _run_dir(pipe: Pipeline, ctx: DistContext) -> Path:
    """The run directory: rank 0 creates and locks it; the other processes take its path (a
    default ``runs/<model>-<time>`` name could differ between them) and neither lock nor
    write it."""
    if not ctx.active:
        return pipe.run_dir()
    pipe.out = Path(ctx.broadcast(str(pipe.run_dir()) if ctx.is_main else None))
    return pipe.out


def _finish(ctx: DistContext, summary: dict | None) -> dict:
    """Rank 0's summary on every process (which also waits until rank 0 has written the run
    directory); then the process group is closed if this job opened it."""
    summary = ctx.broadcast(summary)
    ctx.close()
    return summary


def _after_top1(pipe: Pipeline, plan: Plan, state: dict) -> float:
    """Top-1 of the model rebuilt from the written checkpoint and plan, as ``evaluate`` does."""
    model = copy.deepcopy(pipe.model)
    model.load_state_dict(state)
    qmodel = apply_plan(model, plan, inplace=True)
    with progress_bar(pipe.config.progress, len(pipe.eval_data), "evaluating fine-tuned",
                      "img") as bar:  # fmt: skip
        return top1(qmodel, pipe.eval_data, progress=bar)


def _summary(pipe: Pipeline, opts, result, wall: float, top: dict) -> dict:
    """The run directory's summary (a run's own summary is kept, its top1 extended)."""
    path = pipe.out / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.setdefault("top1", {}).update(top)
    times = result.epoch_times_s
    summary["finetune"] = {
        "epochs": opts.epochs,
        "schedule": opts.schedule,
        "order": opts.order if opts.schedule == "gradual" else None,
        "resumed_from_epoch": result.resumed_from,
        "epoch_losses": result.epoch_losses,
        "time_per_epoch_s": times,
        "images_per_s": result.images / wall if result.images and wall > 0 else None,
        "eval_images": len(pipe.eval_data),
        "runtime": pipe.runtime.to_dict(),
        "options": opts.to_dict(),
        "mean_epoch_s": float(np.mean(times)) if times else None,
    }
    return jsonable(summary)
