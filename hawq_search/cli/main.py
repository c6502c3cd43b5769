"""The ``hawq-search`` command line: thin commands over :class:`hawq_search.pipeline.Pipeline`."""

from __future__ import annotations

import click

from hawq_search import __version__
from hawq_search.cli.cost import cost as cost_group
from hawq_search.cli.errors import run_cli
from hawq_search.cli.options import eval_options, make_pipeline, model_options, search_options
from hawq_search.training.options import LR_SCHEDULES, ORDERS, SCHEDULES


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hawq-search")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
def cli(debug: bool) -> None:
    """Per-channel mixed-precision bit-width search for CNNs.

    \b
    Examples:
      hawq-search run --budget-mb 0.5
      hawq-search run --model resnet20 --budget-mb 0.07 --abits 32 --dataset imagefolder --data-dir DIR
      hawq-search evaluate --plan runs/X/plan.json
    """
    _torchrun_check(click.get_current_context().invoked_subcommand)


def _torchrun_check(command: str | None) -> None:
    """Under torchrun (WORLD_SIZE > 1) only finetune knows how to share the work: any other
    command would run N times over one run directory."""
    import os

    from hawq_search.core.exceptions import UserInputError

    world = os.environ.get("WORLD_SIZE", "1") or "1"
    if world != "1" and command != "finetune":
        raise UserInputError(
            f"{command} does not run under torchrun (WORLD_SIZE={world}): run it as one "
            "process; only finetune trains with one process per device"
        )


@cli.command()
@model_options
@search_options
@eval_options
@click.option(
    "--finetune-epochs",
    type=int,
    help="Then fine-tune the plan for this many epochs (the finetune command's defaults).",
)
def run(finetune_epochs: int | None, **kw) -> None:
    """Sensitivities, exact ILP search, uniform baseline and PTQ evaluation, end to end."""
    from hawq_search.core.exceptions import UserInputError
    from hawq_search.plan import Plan
    from hawq_search.report import console_table, search_lines, solver_status
    from hawq_search.run import run_job
    from hawq_search.training.options import FinetuneOptions

    opts = ft = None
    if finetune_epochs is not None:
        if finetune_epochs < 1:
            raise UserInputError(
                f"finetune_epochs must be an integer >= 1, got {finetune_epochs}",
                params=("finetune_epochs",),
            )
        opts = FinetuneOptions(epochs=finetune_epochs, seed=kw.get("seed", 0))
        opts.validate()
    with make_pipeline(**kw) as pipe:
        summary = run_job(pipe)
        if opts is not None:
            from hawq_search.training.finetune import finetune_job

            plan = Plan.load(pipe.out / "plan.json")
            ft = finetune_job(pipe, plan, opts, plan_path=pipe.out / "plan.json")
    searched = "plan-before-finetune.json" if ft is not None else "plan.json"
    click.echo(console_table(summary, plan=Plan.load(pipe.out / searched)))
    for line in search_lines(summary.get("search", {})):
        if line:
            click.echo(line)
    t = summary["timings_s"]
    click.echo(
        f"search: {solver_status(summary['solver'])}; "
        f"time (s): sensitivity {t['sensitivity']:.1f}, search {t['search']:.1f}, evaluation {t['evaluation']:.1f}"
    )
    click.echo(f"wrote {pipe.out}/plan.json, report.md, summary.json")
    if ft is not None:
        t = ft["top1"]
        click.echo(
            f"fine-tuned {finetune_epochs} epochs: top-1 {t['before']:.2f} % -> {t['after']:.2f} %; "
            f"wrote {pipe.out}/plan.json (fine-tuned), plan-before-finetune.json, finetuned.pt"
        )


@cli.command()
@model_options
@click.option(
    "--sensitivity",
    "method",
    default="fisher",
    show_default=True,
    help="fisher, empirical-fisher, fisher-diag, sampled-fisher or hessian.",
)
@click.option("--hessian-probes", default=100, show_default=True, type=int)
def sensitivity(method: str, **kw) -> None:
    """Compute (or reuse) the sensitivity table in the run directory."""
    with make_pipeline(sensitivity=method, **kw) as pipe:
        pipe.run_dir()
        table = pipe.sensitivity()
    bits = table.w_bits
    rows = sorted(pipe.graph.layers, key=lambda layer: -table.layer_loss(layer.name)[0])
    click.echo(
        f"{table.method} sensitivities of {len(rows)} layers on {table.meta.get('samples')} images"
    )
    click.echo(f"{'layer':28s} " + " ".join(f"{f'{b} bits':>10s}" for b in bits))
    for layer in rows[:10]:
        click.echo(
            f"{layer.name:28s} " + " ".join(f"{v:10.3e}" for v in table.layer_loss(layer.name))
        )
    if len(rows) > 10:
        click.echo(
            f"... {len(rows) - 10} more layers (most sensitive first, predicted loss increase)"
        )
    click.echo(f"cached in {pipe.out}")


@cli.command()
@model_options
@search_options
def search(**kw) -> None:
    """Search a plan (reusing the run directory's sensitivities) and write plan.json."""
    from hawq_search.report import solver_status

    with make_pipeline(**kw) as pipe:
        out = pipe.run_dir()
        plan, result = pipe.search()
        plan.save(out / "plan.json")
    solver = {"status": result.status.value, **result.stats}
    t = plan.totals
    click.echo(
        f"plan: {t['bytes']} bytes ({t['mb']:.4f} MB), {t['avg_weight_bits']:.3f} mean weight bits, "
        f"{t['bops'] / 1e9:.3f} GBOPs; search {solver_status(solver)}"
    )
    click.echo(f"wrote {out}/plan.json")


@cli.command()
@click.option(
    "--plan",
    "plan_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="plan.json to evaluate.",
)
@model_options
@eval_options
def evaluate(plan_path: str, **kw) -> None:
    """PTQ top-1 of a plan next to the float model."""
    from hawq_search.plan import Plan

    plan = Plan.load(plan_path)
    if "finetune" in plan.provenance:
        kw["no_bn_correction"] = True  # trained statistics: correcting them would move them
    if kw.get("model") == "resnet56" and plan.model.get("id") and plan.model["id"] != "resnet56":
        kw["model"] = plan.model["id"]  # default to the plan's own model
    pipe = make_pipeline(**kw)
    fp = pipe.top1(None, "float")
    q = pipe.top1(plan, "plan")
    totals = plan.recompute_totals()
    click.echo(
        f"float top-1 {fp:.2f} %; plan top-1 {q:.2f} % ({totals['mb']:.4f} MB, {totals['avg_weight_bits']:.3f} mean weight bits) on {len(pipe.eval_data)} images"
    )


@cli.command()
@model_options
@search_options
@eval_options
@click.option("--budgets-mb", "sweep_mb", help="Size budgets to sweep: start:stop:count or a list.")
@click.option("--latencies-ms", "sweep_ms", help="Latency budgets to sweep (--accelerator).")
@click.option("--energies-mj", "sweep_mj", help="Energy budgets to sweep (--accelerator).")
def pareto(sweep_mb, sweep_ms, sweep_mj, **kw) -> None:
    """One searched plan per budget, each measured: pareto.json, pareto.png and report.md."""
    from hawq_search.core.exceptions import UserInputError
    from hawq_search.pareto import parse_sweep, run_pareto

    given = {"budget_mb": sweep_mb, "latency_ms": sweep_ms, "energy_mj": sweep_mj}
    given = {k: v for k, v in given.items() if v}
    if len(given) != 1:
        raise UserInputError(
            "give exactly one range to sweep: --budgets-mb, --latencies-ms or --energies-mj "
            "(other budgets stay fixed through --budget-mb, --latency-ms, --energy-mj)"
        )
    ((field, text),) = given.items()
    sweep = parse_sweep(field, text)
    kw[field] = sweep.values[-1]  # validated with the loosest budget
    with make_pipeline(**kw) as pipe:
        data = run_pareto(pipe, sweep, progress=click.echo)
    click.echo(
        f"wrote {pipe.out}/pareto.json, pareto.png, report.md and {len(data['points'])} plans"
    )


def _stages(ctx, param, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a list of fractions such as 0.25,0.5,1"
        ) from None


@cli.command()
@click.option(
    "--plan",
    "plan_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="plan.json to fine-tune.",
)
@model_options
@eval_options
@click.option("--epochs", required=True, type=int, help="Training epochs (total, all phases).")
@click.option(
    "--schedule",
    default="gradual",
    show_default=True,
    type=click.Choice(SCHEDULES),
    help="gradual (QGAT), direct QAT, or ctmq (bit ladder cycles).",
)
@click.option(
    "--order",
    default="sensitivity",
    show_default=True,
    type=click.Choice(ORDERS),
    help="Order channels are quantized in (gradual): least sensitive first, reverse, random.",
)
@click.option(
    "--stages",
    default="0.25,0.5,0.75,1",
    show_default=True,
    callback=_stages,
    help="Cumulative fractions of quantized channels per stage (gradual).",
)
@click.option("--cycles", default=2, show_default=True, type=int, help="CTMQ cycles.")
@click.option(
    "--ladder-top",
    default=8,
    show_default=True,
    type=int,
    help="CTMQ ladder's first width (then one bit less per rung).",
)
@click.option("--lr", default=0.01, show_default=True, type=float)
@click.option("--momentum", default=0.9, show_default=True, type=float)
@click.option("--weight-decay", default=5e-4, show_default=True, type=float)
@click.option("--train-batch-size", default=128, show_default=True, type=int)
@click.option("--temperature", default=4.0, show_default=True, type=float, help="KD temperature.")
@click.option(
    "--kd-alpha",
    default=0.9,
    show_default=True,
    type=float,
    help="Weight of the KD term (1 - alpha on cross-entropy).",
)
@click.option(
    "--final-share",
    default=0.5,
    show_default=True,
    type=float,
    help="Share of the steps at the planned widths (gradual, ctmq); earlier phases split the rest.",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(LR_SCHEDULES),
    default="phase",
    show_default=True,
    help="One cosine over the run, or one per phase (gradual stage, CTMQ rung) with the "
    "momentum reset at each phase.",
)
@click.option("--no-kd", is_flag=True, help="Cross-entropy only, no float teacher.")
@click.option(
    "--feature-kd",
    default=0.0,
    show_default=True,
    type=float,
    help="Weight of channel-attention feature distillation from the teacher (0 = off).",
)
@click.option("--no-augment", is_flag=True, help="No random crop + flip.")
@click.option(
    "--freeze-bn-epochs",
    default=0,
    show_default=True,
    type=int,
    help="Last epochs with BatchNorm statistics frozen (use with --lr-schedule run: frozen "
    "statistics under a restarted cosine diverged).",
)
@click.option(
    "--train-size",
    default=0,
    show_default=True,
    type=int,
    help="Seeded training images (0 = the whole train split).",
)
@click.option("--resume", is_flag=True, help="Continue from the run directory's checkpoint.")
@click.option(
    "--learn-bits",
    is_flag=True,
    help="Learn the widths during training (AdaQAT) inside the plan's budgets; the exact "
    "solver snaps the result onto them.",
)
@click.option(
    "--bits-lr", default=0.25, show_default=True, type=float, help="Largest move per probe."
)
@click.option(
    "--bits-probes",
    default=1,
    show_default=True,
    type=int,
    help="Width groups probed per step (one extra forward each).",
)
@click.option(
    "--bits-until",
    default=0.75,
    show_default=True,
    type=float,
    help="Fraction of the steps during which widths are learned.",
)
@click.option(
    "--bits-freeze",
    default=10,
    show_default=True,
    type=int,
    help="Upward moves from one width before it freezes.",
)
def finetune(plan_path: str, **kw) -> None:
    """Quantization-aware fine-tuning of a plan (LSQ, KD, QGAT/CTMQ schedules); under
    ``torchrun --nproc-per-node N`` with DistributedDataParallel (rank 0 writes)."""
    import os

    from hawq_search.plan import Plan
    from hawq_search.training.finetune import finetune_job

    opts = _finetune_options(kw)
    opts.validate()
    plan = Plan.load(plan_path)
    main = os.environ.get("RANK", "0") in ("", "0")  # torchrun: rank 0 shows and tells
    kw["quiet"] = kw.get("quiet") or not main
    with make_pipeline(**kw) as pipe:
        summary = finetune_job(pipe, plan, opts, plan_path=plan_path)
    if not main:
        return
    t, f = summary["top1"], summary["finetune"]
    click.echo(
        f"top-1 before {t['before']:.2f} % (PTQ), after {t['after']:.2f} % (float {t['fp']:.2f} %) "
        f"on {f['eval_images']} images; {f['images_per_s'] or 0:.0f} img/s"
    )
    click.echo(f"wrote {pipe.out}/plan.json, finetuned.pt, summary.json")


def _finetune_options(kw: dict):
    from hawq_search.training.options import FinetuneOptions

    return FinetuneOptions(
        epochs=kw.pop("epochs"), schedule=kw.pop("schedule"), order=kw.pop("order"),
        stages=kw.pop("stages"), cycles=kw.pop("cycles"), ladder_top=kw.pop("ladder_top"),
        lr=kw.pop("lr"), lr_schedule=kw.pop("lr_schedule"), momentum=kw.pop("momentum"), weight_decay=kw.pop("weight_decay"),
        batch_size=kw.pop("train_batch_size"), temperature=kw.pop("temperature"),
        alpha=kw.pop("kd_alpha"), kd=not kw.pop("no_kd"), feature_kd=kw.pop("feature_kd"), final_share=kw.pop("final_share"), augment=not kw.pop("no_augment"),
        freeze_bn_epochs=kw.pop("freeze_bn_epochs"), train_size=kw.pop("train_size"),
        seed=kw.get("seed", 0), resume=kw.pop("resume"), learn_bits=kw.pop("learn_bits"),
        bits_lr=kw.pop("bits_lr"), bits_probes=kw.pop("bits_probes"),
        bits_until=kw.pop("bits_until"), bits_freeze=kw.pop("bits_freeze"),
    )  # fmt: skip


@cli.command()
def models() -> None:
    """List registered models."""
    from hawq_search.models import get_model_spec, list_models

    for name in list_models():
        spec = get_model_spec(name)
        click.echo(f"{name:20s} {spec.dataset:9s} {spec.num_classes:5d} classes")


cli.add_command(cost_group)


def main(args: list[str] | None = None) -> None:
    raise SystemExit(run_cli(cli, args))


if __name__ == "__main__":
    main()
