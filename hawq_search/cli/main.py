"""The ``hawq-search`` command line: thin commands over :class:`hawq_search.pipeline.Pipeline`."""

from __future__ import annotations

import click

from hawq_search import __version__
from hawq_search.cli.cost import cost as cost_group
from hawq_search.cli.errors import run_cli
from hawq_search.cli.options import eval_options, make_pipeline, model_options, search_options


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


@cli.command()
@model_options
@search_options
@eval_options
def run(**kw) -> None:
    """Sensitivities, exact ILP search, uniform baseline and PTQ evaluation, end to end."""
    from hawq_search.plan import Plan
    from hawq_search.report import console_table, search_lines, solver_status
    from hawq_search.run import run_job

    with make_pipeline(**kw) as pipe:
        summary = run_job(pipe)
    click.echo(console_table(summary, plan=Plan.load(pipe.out / "plan.json")))
    for line in search_lines(summary.get("search", {})):
        if line:
            click.echo(line)
    t = summary["timings_s"]
    click.echo(
        f"search: {solver_status(summary['solver'])}; "
        f"time (s): sensitivity {t['sensitivity']:.1f}, search {t['search']:.1f}, evaluation {t['evaluation']:.1f}"
    )
    click.echo(f"wrote {pipe.out}/plan.json, report.md, summary.json")


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
