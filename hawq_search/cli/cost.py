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


@cost.command()
@click.option("--accelerator", required=True, help="Built-in name or profile YAML path.")
@click.option("--model", default="resnet56", show_default=True)
@click.option("--wbits", default="2,4,8,32", show_default=True, callback=parse_bits)
@click.option(
    "--abits",
    default="8",
    show_default=True,
    callback=parse_bits,
    help="Activation bits of the table.",
)
@click.option("--accel-batch", type=int, help="Override the profile's batch.")
def show(accelerator: str, model: str, wbits, abits, accel_batch) -> None:
    """Per-layer latency over weight bit options, totals, and what bounds each layer."""
    from cost_models.registry import load_accelerator

    cm = load_accelerator(accelerator, batch=accel_batch)
    graph = _graph_of(model)
    a = abits[0]
    click.echo(f"{cm.name} (batch {cm.batch}), {model}: latency in us per batch at a_bits={a}")
    click.echo(
        f"{'layer':26s} " + " ".join(f"{f'w{b}':>9s}" for b in wbits) + "  bound@w8  extrap."
    )
    totals = [0.0] * len(wbits)
    energy = [0.0] * len(wbits)
    bounds = {"compute": 0, "memory": 0, "measured": 0}
    for layer in graph.layers:
        costs = [cm.layer_cost(layer, b, a) for b in wbits]
        ref = cm.layer_cost(layer, 8, a)
        bounds[ref.bound] += 1
        for i, c in enumerate(costs):
            totals[i] += c.latency_s
            energy[i] += c.energy_j
        flag = "yes" if any(c.extrapolated for c in costs) else ""
        click.echo(
            f"{layer.name:26s} "
            + " ".join(f"{c.latency_s * 1e6:9.2f}" for c in costs)
            + f"  {ref.bound:8s}  {flag}"
        )
    other = cm.fixed_cost(graph.layers)
    if other.latency_s:
        click.echo(
            f"{'other ops (measured)':26s} "
            + " ".join(f"{other.latency_s * 1e6:9.2f}" for _ in wbits)
        )
        totals = [t + other.latency_s for t in totals]
        energy = [e + other.energy_j for e in energy]
    click.echo(f"{'total latency (ms)':26s} " + " ".join(f"{t * 1e3:9.4f}" for t in totals))
    click.echo(f"{'total energy (mJ)':26s} " + " ".join(f"{e * 1e3:9.4f}" for e in energy))
    click.echo(", ".join(f"{n} {k}-bound" for k, n in bounds.items() if n) + " layers at w8")


@cost.command()
@click.argument("path", type=click.Path(dir_okay=False))
def check(path: str) -> None:
    """Validate a profile YAML (and the cost table it names) or a cost table CSV."""
    from cost_models.registry import load_accelerator
    from cost_models.table import load_cost_table

    p = Path(path)
    if not p.is_file():
        raise click.BadParameter(f"{p} does not exist", param_hint="PATH")
    if p.suffix.lower() == ".csv":
        table = load_cost_table(p)
        click.echo(f"{p}: valid cost table, {len(table)} rows")
    else:
        m = load_accelerator(p)
        click.echo(f"{p}: valid profile {m.name!r} ({type(m).__name__}, batch {m.batch})")


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
    from cost_models.measure import profile_local_cpu

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
