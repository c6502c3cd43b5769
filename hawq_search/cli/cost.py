"""``hawq-search cost``: list, show, check and measure accelerator cost models."""

from __future__ import annotations

from pathlib import Path

import click

from hawq_search.cli.options import parse_bits


def _graph_of(model: str, *, with_model: bool = False):
    """Traced graph of a model's architecture (costs need shapes, not weights); with the
    network and its input size if asked."""
    import torch

    from hawq_search.graph.trace import trace_model
    from hawq_search.models.registry import create_model, get_model_spec

    if ":" in model:
        loaded = create_model(model, pretrained=False)
        net, size = loaded.model, loaded.preprocess.input_size
    else:
        spec = get_model_spec(model)
        net, size = spec.builder(num_classes=spec.num_classes), spec.preprocess.input_size
    graph = trace_model(net.eval(), torch.zeros(1, *size))
    return (graph, net, tuple(size)) if with_model else graph


@click.group()
def cost() -> None:
    """Accelerator cost models: built-in profiles, user profiles and measured tables."""


@cost.command("list")
def list_() -> None:
    """Built-in accelerator profiles."""
    from cost_models.registry import list_accelerators, load_accelerator

    for name in list_accelerators():
        m = load_accelerator(name)
        first = " ".join(m.description.split())[:70]
        click.echo(f"{name:28s} batch {m.batch:<4d} {first}")


def _cost_bits(ctx, param, value: str | None):
    """parse_bits, plus the range every cost model prices (16 and 32 mean unquantized)."""
    from cost_models.base import MAX_BITS

    bits = parse_bits(ctx, param, value)
    bad = [b for b in bits or () if not 1 <= b <= MAX_BITS]
    if bad:
        raise click.BadParameter(
            f"{value!r}: bit-width {bad[0]} is out of range (1..{MAX_BITS}; 16 and 32 mean "
            "unquantized)"
        )
    return bits


MARKS = {"measured": "", "rounded-up": "^", "interpolated": "~", "extrapolated": "*"}
LEGEND = (
    "marks: unmarked = measured, ^ rounded up from a measured pair with more bits, "
    "~ interpolated, * extrapolated (analytic model scaled to the table), "
    "- unquantized bits the table has no rows for (not measured, not flagged)"
)


def _mark(cm, layer, w: int, a: int) -> str:
    """How a table model priced this cell ("" for measured or for analytic models)."""
    from cost_models.table import TableCostModel, is_unquantized_gap

    if not isinstance(cm, TableCostModel):
        return ""
    if is_unquantized_gap(cm, w, a):
        return "-"
    return MARKS[cm.price_source(layer, w, a)]


def _table_summary(cm, layers) -> str | None:
    from cost_models.table import TableCostModel

    if not isinstance(cm, TableCostModel):
        return None
    n = sum(cm.is_measured(layer) for layer in layers)
    return (
        f"cost table {cm.table.path}: {n} of {len(layers)} layers measured at batch {cm.batch}, "
        f"{len(layers) - n} priced by the analytic model"
    )


@cost.command()
@click.option("--accelerator", required=True, help="Built-in name or profile YAML path.")
@click.option("--model", default="resnet56", show_default=True)
@click.option("--wbits", default="2,4,8,32", show_default=True, callback=_cost_bits)
@click.option(
    "--abits",
    default="8",
    show_default=True,
    callback=_cost_bits,
    help="Activation bits of the table.",
)
@click.option("--accel-batch", type=int, help="Override the profile's batch.")
def show(accelerator: str, model: str, wbits, abits, accel_batch) -> None:
    """Per-layer latency over weight bit options, totals, and what bounds each layer; cells of
    a measured table are marked measured, rounded up, interpolated or extrapolated."""
    from cost_models.base import Cost
    from cost_models.registry import load_accelerator

    cm = load_accelerator(accelerator, batch=accel_batch)
    graph = _graph_of(model)
    a = abits[0]
    click.echo(f"{cm.name} (batch {cm.batch}), {model}: latency in us per batch at a_bits={a}")
    summary = _table_summary(cm, graph.layers)
    if summary:
        click.echo(summary)
    click.echo(
        f"{'layer':26s} " + " ".join(f"{f'w{b}':>9s} " for b in wbits) + " bound@w8  extrap."
    )
    totals = [Cost.zero()] * len(wbits)
    bounds = {"compute": 0, "memory": 0, "measured": 0}
    for layer in graph.layers:
        costs = [cm.layer_cost(layer, b, a) for b in wbits]
        marks = [_mark(cm, layer, b, a) for b in wbits]
        ref = cm.layer_cost(layer, 8, a)
        bounds[ref.bound] += 1
        totals = [t + c for t, c in zip(totals, costs, strict=True)]
        cells = " ".join(f"{c.latency_s * 1e6:9.2f}{m or ' '}" for c, m in zip(costs, marks, strict=True))  # fmt: skip
        flagged = "*" in marks if summary else any(c.extrapolated for c in costs)
        flag = "yes" if flagged else ""
        click.echo(f"{layer.name:26s} {cells} {ref.bound:8s}  {flag}")
    _show_totals(cm, graph.layers, wbits, totals)
    if summary:
        click.echo(LEGEND)
    click.echo(", ".join(f"{n} {k}-bound" for k, n in bounds.items() if n) + " layers at w8")


def _show_totals(cm, layers, wbits, totals) -> None:
    other = cm.fixed_cost(layers)
    if other.latency_s:
        click.echo(
            f"{'other ops (measured)':26s} "
            + " ".join(f"{other.latency_s * 1e6:9.2f} " for _ in wbits)
        )
        totals = [t + other for t in totals]
    click.echo(f"{'total latency (ms)':26s} " + " ".join(f"{t.latency_s * 1e3:9.4f} " for t in totals))  # fmt: skip
    note = "" if all(t.energy_measured for t in totals) else f"  not measured: {cm.energy_note()}"
    click.echo(f"{'total energy (mJ)':26s} " + " ".join(f"{t.energy_j * 1e3:9.4f} " for t in totals) + note)  # fmt: skip


@cost.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--model", help="Also match the table's rows against this model's layers.")
@click.option(
    "--accel-batch",
    type=int,
    help="Batch the layers run at (default: the profile's; for a CSV, the table's).",
)
def check(path: str, model: str | None, accel_batch: int | None) -> None:
    """Validate a profile YAML (and the cost table it names) or a cost table CSV; with --model,
    say which rows match its layers and which layers fall back to the analytic model."""
    from cost_models.registry import load_accelerator
    from cost_models.table import TableCostModel, load_cost_table

    p = Path(path)
    if not p.is_file():
        raise click.BadParameter(f"{p} does not exist", param_hint="PATH")
    if accel_batch is not None and accel_batch < 1:
        raise click.BadParameter(f"must be >= 1, got {accel_batch}", param_hint="--accel-batch")
    layers = _graph_of(model).layers if model else None
    if p.suffix.lower() == ".csv":
        table = load_cost_table(p)
        click.echo(f"{p}: valid cost table, {len(table)} rows")
        _check_table(table, layers, model, accel_batch, None)
        return
    m = load_accelerator(p, batch=accel_batch)
    click.echo(f"{p}: valid profile {m.name!r} ({type(m).__name__}, batch {m.batch})")
    if isinstance(m, TableCostModel):
        click.echo(
            f"cost table {m.table.path}: {len(m.table)} rows, measured/analytic latency "
            f"{m.latency_efficiency:.3g} (median)"
        )
        _check_table(m.table, layers, model, m.batch, m.latency_efficiency)
    elif layers is not None:
        click.echo(
            f"no cost_table: all {len(layers)} layers of {model} priced by the analytic model"
        )


def _check_table(table, layers, model, batch, efficiency) -> None:
    import warnings

    from cost_models.table_check import check_table

    res = check_table(table, layers, batch=batch, latency_efficiency=efficiency)
    plural = "es" if len(res.batches) > 1 else ""
    click.echo(f"{res.shapes} shapes at batch{plural} {', '.join(map(str, res.batches))}")
    at = f"batch {res.batch}" if res.batch is not None else f"batch{plural} " + ", ".join(map(str, res.batches))  # fmt: skip
    if layers is not None:
        click.echo(
            f"{model} at {at}: {res.matched_rows} of {res.rows} rows match its layers; "
            f"{len(res.measured_layers)} of {res.layers} layers measured, "
            f"{len(res.fallback_layers)} fall back to the analytic model"
        )
        for u in res.unmatched[:20]:
            click.echo(f"  no layer matches {u.describe()}")
        if len(res.unmatched) > 20:
            click.echo(f"  ... {len(res.unmatched) - 20} more shapes match no layer")
        if res.fallback_layers:
            click.echo("analytic fallback: " + ", ".join(res.fallback_layers))
    for w in res.warnings:
        warnings.warn(w, stacklevel=1)


@cost.command()
@click.option("--model", default="resnet56", show_default=True)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for the profile and cost table.",
)
@click.option(
    "--repeats",
    default=50,
    show_default=True,
    type=int,
    help="Timed runs per layer and precision (median).",
)
@click.option("--batch", default=1, show_default=True, type=int)
@click.option("--threads", type=int, help="torch threads while timing (default: current).")
def profile(model: str, out: str, repeats: int, batch: int, threads) -> None:
    """Time every layer of MODEL on this CPU (fp32, and int8 where a quantized backend runs) and
    write a profile YAML plus cost table usable with --accelerator."""
    from hawq_search.cpu_profile import profile_local_cpu

    if repeats < 1 or batch < 1:
        raise click.BadParameter("--repeats and --batch must be >= 1")
    graph, net, size = _graph_of(model, with_model=True)
    path = profile_local_cpu(
        graph.layers, out, repeats=repeats, batch=batch, threads=threads,
        model=net, input_shape=size, model_name=model,
    )  # fmt: skip
    click.echo(
        f"wrote {path} and its cost table ({len(graph.layers)} layers); use --accelerator {path}"
    )
