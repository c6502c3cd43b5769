"""Fine-tuning benchmark: direct QAT vs gradual QGAT vs gradual + learned bits vs CTMQ vs the
same-length full-precision fine-tune, and the QAT step's cost against an FP step.

Calibration (512 images), sensitivities, plans and training all use ``cifar10-jpeg/train``;
every fine-tune is scored on ``cifar10-jpeg/test`` (10,000) and ``cifar10-lossless/test``
(1,000). Each quantized fine-tune is compared with the FP fine-tune of the same length from
the same checkpoint in the same run (the JPEG images shift the distribution; see the data
README). CPU only, so training uses a seeded subset of the training split (``--train-size``,
``--r56-train-size``); an "epoch" is one pass over that subset.

Run from the repository root::

    python benchmarks/bench_finetune.py

Parts (``--parts``): ``throughput`` (images/s of the FP step, the QAT step without and with
the KD teacher, alternated in one process), ``resnet20`` (plans at about 3 and 2 bits mean with
4-bit activations, 1 and 3 epochs, every schedule), ``resnet56`` (0.32 MB with 8-bit
activations, 3 epochs, default recipe and FP). Finished fine-tunes are kept in the work
directory (default ``/tmp/hawq_bench_finetune``), so an interrupted run resumes; the results
table is rewritten from everything finished so far.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _common import (
    RESULTS,
    SHARED,
    THREADS,
    WEIGHTS,
    Header,
    display_path,
    log,
    md_table,
    median,
    setup_torch,
    write_results,
)

from hawq_search.config import RunConfig
from hawq_search.data.datasets import load_subset
from hawq_search.evaluation import top1
from hawq_search.pipeline import Pipeline
from hawq_search.plan import Plan, apply_plan
from hawq_search.training.finetune import FINETUNED, finetune_job, training_data
from hawq_search.training.options import FinetuneOptions
from hawq_search.training.qat_model import build_qat_model
from hawq_search.training.trainer import _optimizer, _step

JPEG = SHARED / "data" / "cifar10-jpeg"
LOSSLESS = SHARED / "data" / "cifar10-lossless"
W_BITS = (2, 3, 4, 5, 6, 8)
VARIANTS = {  # name -> FinetuneOptions fields
    "fp": {"schedule": "direct"},
    "direct": {"schedule": "direct"},
    "gradual (default)": {"schedule": "gradual"},
    "gradual + learned bits": {"schedule": "gradual", "learn_bits": True},
    # one probe per step reaches each of ResNet-20's ~65 width groups about once an epoch:
    # 4 probes per step and twice the move let widths move within a short run
    "gradual + learned bits x4 probes": {
        "schedule": "gradual",
        "learn_bits": True,
        "bits_probes": 4,
        "bits_lr": 0.5,
    },
    "ctmq": {"schedule": "ctmq"},
    # the recipe the defaults replaced: one cosine over the run, BatchNorm frozen for the last
    # epoch (the defaults are one cosine per phase with the momentum reset, live BatchNorm)
    "gradual run cosine frozen BN": {
        "schedule": "gradual",
        "lr_schedule": "run",
        "freeze_bn_epochs": 1,
    },
    "ctmq run cosine frozen BN": {"schedule": "ctmq", "lr_schedule": "run", "freeze_bn_epochs": 1},
    # ablations (not in the default variant list)
    "gradual reverse order": {"schedule": "gradual", "order": "reverse"},
    "gradual final share 0.75": {"schedule": "gradual", "final_share": 0.75},
    # one pass down the ladder, so each rung gets twice the steps
    "ctmq 1 cycle": {"schedule": "ctmq", "cycles": 1},
    # the short ladder methods.md suggests for CPU runs (4, 3, 2 instead of 8 ... 2)
    "ctmq ladder from 4": {"schedule": "ctmq", "ladder_top": 4},
    "ctmq ladder from 4 1 cycle": {"schedule": "ctmq", "ladder_top": 4, "cycles": 1},
    # direct's replaced recipe (its one phase makes both cosines the same)
    "direct frozen BN": {"schedule": "direct", "freeze_bn_epochs": 1},
}
# the run-to-run spread: these recipes again with other seeds of the data order and augmentation
VARIANTS.update(
    {
        f"{name} seed {seed}": {**VARIANTS[name], "seed": seed}
        for name in (
            "direct",
            "gradual (default)",
            "ctmq",
            "ctmq ladder from 4",
            "ctmq ladder from 4 1 cycle",
        )  # fmt: skip
        for seed in (1, 2)
    }
)


class Store:
    """Finished fine-tunes in one JSON file, rewritten atomically after each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def put(self, key: str, value: dict) -> None:
        self.data[key] = value
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def pipeline(model: str, abits: tuple[int, ...], out: Path, budget_mb=None) -> Pipeline:
    cfg = RunConfig(
        model=model, dataset="imagefolder", data_dir=str(JPEG), weights_dir=str(WEIGHTS),
        calib_size=512, eval_size=0, wbits=W_BITS, abits=abits, budget_mb=budget_mb, seed=0,
        out=str(out), progress=False,
    )  # fmt: skip
    return Pipeline(cfg)


def mean_bits_budget_mb(pipe: Pipeline, bits: float) -> float:
    """The size of the uniform ``bits``-bit plan (its scales included), linearly between the
    two neighbouring uniform plans for a fractional ``bits``: a per-channel plan within it
    averages about ``bits`` bits."""

    def uniform_mb(b: int) -> float:
        plan = pipe.make_plan(
            {layer.name: [b] * layer.out_channels for layer in pipe.graph.layers},
            dict.fromkeys(pipe.graph.act_groups, 32),
        )
        return plan.totals["bytes"] / 1e6

    low = int(bits)
    frac = bits - low
    return (
        uniform_mb(low) if frac == 0 else (1 - frac) * uniform_mb(low) + frac * uniform_mb(low + 1)
    )


def searched_plan(pipe: Pipeline, path: Path) -> Plan:
    if path.is_file():
        return Plan.load(path)
    plan, _ = pipe.search()
    plan.save(path)
    return plan


def lossless_top1(pipe: Pipeline, run_dir: Path, lossless) -> float:
    model = copy.deepcopy(pipe.model)
    model.load_state_dict(torch.load(run_dir / FINETUNED, weights_only=True))
    plan = Plan.load(run_dir / "plan.json")
    return top1(apply_plan(model, plan, inplace=True), lossless)


def finetune_row(pipe, plan, key, variant, epochs, train, lossless, work, store) -> dict:
    if key in store.data:
        return store.data[key]
    run_dir = work / "runs" / key.replace(" ", "_").replace("/", "-").replace("+", "p")
    fields = dict(VARIANTS[variant], epochs=epochs, train_size=len(train))
    log(f"{key}: fine-tuning ({fields})")
    t0 = time.perf_counter()
    with pipe.variant(out=str(run_dir)) as pv:
        s = finetune_job(pv, plan, FinetuneOptions(**fields), train_data=train)
        row = {
            "key": key, "variant": variant, "epochs": epochs, "train_images": len(train),
            "jpeg_before": s["top1"]["before"], "jpeg_after": s["top1"]["after"],
            "lossless_after": lossless_top1(pv, run_dir, lossless),
            "images_per_s": s["finetune"]["images_per_s"],
            "time_per_epoch_s": s["finetune"]["time_per_epoch_s"],
            "wall_s": time.perf_counter() - t0,
            "plan_bytes": Plan.load(run_dir / "plan.json").totals["bytes"],
            "plan_mean_bits": Plan.load(run_dir / "plan.json").totals["avg_weight_bits"],
            "learn_bits": s["finetune"].get("learn_bits"),
            "budget_bytes": (plan.budgets or {}).get("size_bytes"),
        }  # fmt: skip
    log(f"{key}: jpeg {row['jpeg_before']:.2f} -> {row['jpeg_after']:.2f}, lossless "
        f"{row['lossless_after']:.2f}, {row['wall_s']:.0f} s")  # fmt: skip
    store.put(key, row)
    return row


def in_memory_eval(pipe: Pipeline) -> Pipeline:
    """The 10,000 JPEG test images decoded once and shared by every fine-tune of the part."""
    pipe._eval = load_subset("imagefolder", str(JPEG), "test", pipe.loaded.preprocess, 0, 0)
    return pipe


def part_resnet20(args, work: Path, store: Store, lossless) -> None:
    base = in_memory_eval(pipeline("resnet20", (4,), work / "resnet20"))
    train = training_data(base, args.train_size)
    fp_plan = base.float_plan()
    # the first benchmark's runs used 10,000 images and keep their keys; other sizes say theirs
    size = "" if len(train) == 10_000 else f" {len(train) // 1000}k"
    for epochs in args.epochs:
        finetune_row(base, fp_plan, f"resnet20 fp {epochs}ep{size}", "fp", epochs, train,
                     lossless, work, store)  # fmt: skip
    for bits in args.mean_bits:
        budget = mean_bits_budget_mb(base, bits)
        pipe = base.variant(budget_mb=budget, out=str(work / f"resnet20_w{bits:g}"))
        plan = searched_plan(pipe, work / f"resnet20_w{bits:g}_plan.json")
        for epochs in args.epochs:
            for variant in args.variants:
                key = f"resnet20 ~{bits:g}b A4 {variant} {epochs}ep{size}"
                finetune_row(pipe, plan, key, variant, epochs, train, lossless, work, store)


def part_resnet56(args, work: Path, store: Store, lossless) -> None:
    base = in_memory_eval(pipeline("resnet56", (8,), work / "resnet56", budget_mb=0.32))
    train = training_data(base, args.r56_train_size)
    plan = searched_plan(base, work / "resnet56_0.32_plan.json")
    runs = [("fp", base.float_plan())] + [(v, plan) for v in args.r56_variants]
    for variant, p in runs:
        key = f"resnet56 0.32MB A8 {variant} 3ep"
        finetune_row(base, p, key, variant, 3, train, lossless, work, store)


def part_throughput(args, work: Path, store: Store) -> None:
    pipe = pipeline("resnet20", (4,), work / "resnet20")
    pipe = pipe.variant(budget_mb=mean_bits_budget_mb(pipe, 3), out=str(work / "resnet20_w3"))
    plan = searched_plan(pipe, work / "resnet20_w3_plan.json")
    train = training_data(pipe, 128 * 4)
    opts = FinetuneOptions(epochs=1)
    runtime = pipe.runtime
    teacher = copy.deepcopy(pipe.model).eval()
    fp_model = copy.deepcopy(pipe.model).train()
    qmodel = build_qat_model(pipe.model, plan).train()
    setups = {
        "fp step": (fp_model, None),
        "qat step, no teacher": (qmodel, None),
        "qat step + KD teacher": (qmodel, teacher),
    }
    optims = {name: _optimizer(m, opts, 10**6) for name, (m, _) in setups.items()}
    batches = [(train.images[i : i + 128], train.labels[i : i + 128]) for i in range(0, 512, 128)]
    times: dict[str, list[float]] = {name: [] for name in setups}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, (model, t) in setups.items():
            opt, sched = optims[name]
            t0 = time.perf_counter()
            for k in range(args.steps):
                x, y = batches[k % len(batches)]
                _step(model, t, x, y, opts, runtime, opt, sched)
            if r > 0:
                times[name].append(args.steps * 128 / (time.perf_counter() - t0))
    ips = {name: median(v) for name, v in times.items()}
    store.put("throughput", {
        "images_per_s": ips, "rounds": times, "steps": args.steps, "batch": 128,
        "runtime": runtime.to_dict(), "plan_mean_bits": plan.totals["avg_weight_bits"],
        "ratio_no_teacher": ips["fp step"] / ips["qat step, no teacher"],
        "ratio_teacher": ips["fp step"] / ips["qat step + KD teacher"],
    })  # fmt: skip
    log(f"throughput: {ips}")


def _portable(command: str) -> str:
    """An invocation as recorded, its work and output directories (machine paths) elided."""
    return re.sub(r"--(work|out)-dir \S+", r"--\1-dir DIR", command)


def write_table(store: Store, header: Header, args, out_dir: Path) -> None:
    rows, data = [], dict(store.data)
    data["_invocations"] = [dict(r, command=_portable(r["command"]))
                            for r in data.get("_invocations", [])]  # fmt: skip
    runs = {k: r for k, r in data.items() if k != "throughput" and not k.startswith("_")}

    def same_length(k: str, r: dict) -> tuple:
        return k.split()[0], r["epochs"], r["train_images"]

    fp = {same_length(k, r): r for k, r in runs.items() if r["variant"] == "fp"}
    for key, r in runs.items():
        ref = fp.get(same_length(key, r))
        gap = None if ref is None else r["jpeg_after"] - ref["jpeg_after"]
        lb = r.get("learn_bits") or {}
        moved = f"{lb['moved_down']} down / {lb['moved_up']} up" if lb else ""
        rows.append([
            key, r["train_images"], f"{r['plan_mean_bits']:.2f}", r["plan_bytes"],
            f"{r['jpeg_before']:.2f}", f"{r['jpeg_after']:.2f}",
            "" if gap is None else f"{gap:+.2f}", f"{r['lossless_after']:.2f}", moved,
            f"{r['images_per_s']:.0f}",
        ])  # fmt: skip
    body = [
        "Calibration, sensitivities and training on `cifar10-jpeg/train`; scored on "
        "`cifar10-jpeg/test` (10,000) and `cifar10-lossless/test` (1,000). \"before\" is the "
        "plan's PTQ top-1 (BatchNorm-corrected), \"after\" the fine-tuned model rebuilt from "
        "its `plan.json` and checkpoint. \"vs FP\" compares with the FP fine-tune of the same "
        "length in this run. Epochs are passes over the stated training subset (seeded).",
        "",
        md_table(["run", "train images", "mean W bits", "bytes", "jpeg before", "jpeg after",
                  "vs FP (jpeg)", "lossless after", "learned widths (groups)", "img/s"], rows),
    ]  # fmt: skip
    body += [
        "",
        "img/s is of each whole fine-tune as it ran (the first QAT run of a process includes "
        "torch.compile's warm-up, and some runs shared the 2 cores with other jobs, which can "
        "slow a run several times): the cost of a step is in the throughput section below, "
        "measured alone in one process.",
        "",
        "Recipes: the defaults give every phase (gradual stage, CTMQ rung; `direct` has one) "
        "its own cosine from the full learning rate with the momentum reset "
        "(`--lr-schedule phase`) and keep the BatchNorm statistics live "
        "(`--freeze-bn-epochs 0`). `run cosine frozen BN` (and `frozen BN` for direct) is the "
        "recipe the defaults replaced: one cosine over the whole run (`--lr-schedule run`), the "
        "statistics frozen for the last epoch (`--freeze-bn-epochs 1`; a 1-epoch run never "
        "freezes them). `ctmq 1 cycle` runs the ladder once, `ladder from "
        "4` starts it at 4 bits instead of 8 (`--ladder-top 4`), `seed k` reruns a recipe with "
        "another seed of the data order and augmentation (`--seed k`), `reverse "
        "order` quantizes the most sensitive channels first, `final share 0.75` gives the "
        "planned widths 75 % of the steps instead of 50 %. The ~2-bit plan has the size of "
        "the uniform 2-bit plan and 2 is the lowest width, so it is that uniform plan and its "
        "learned widths cannot move without breaking the budget; the ~2.25-bit plan (a "
        "quarter of the way to the uniform 3-bit size) is a real per-channel mix.",
        "",
        "Invocations that filled this table (finished fine-tunes are kept and reused):",
        "",
    ]
    body += [f"- `{r['command']}` -- {r['date']}, load {r['loadavg_start']}"
             for r in data.get("_invocations", [])]  # fmt: skip
    tp = data.get("throughput")
    if tp:
        ips = tp["images_per_s"]
        body += [
            "",
            "## Throughput (ResNet-20, batch 128, same process, alternated rounds)",
            "",
            f"Runtime: {tp['runtime']}; plan mean {tp['plan_mean_bits']:.2f} bits, A4; "
            f"{tp['steps']} steps per round, median of {len(tp['rounds']['fp step'])} rounds.",
            "",
            md_table(
                ["step", "images/s", "cost vs FP step", "target"],
                [
                    ["fp step", f"{ips['fp step']:.0f}", "1.00x", ""],
                    [
                        "qat step, no teacher",
                        f"{ips['qat step, no teacher']:.0f}",
                        f"{tp['ratio_no_teacher']:.2f}x",
                        "<= 1.5x",
                    ],
                    [
                        "qat step + KD teacher",
                        f"{ips['qat step + KD teacher']:.0f}",
                        f"{tp['ratio_teacher']:.2f}x",
                        "<= 1.9x",
                    ],
                ],
            ),  # fmt: skip
        ]
    write_results("finetune", header, "Fine-tuning benchmark", "\n".join(body),
                  {"runs": data, "args": {k: v for k, v in vars(args).items()
                                          if not isinstance(v, Path)}}, out_dir)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parts", default="throughput,resnet20,resnet56")
    ap.add_argument("--epochs", default="1,3", help="ResNet-20 fine-tune lengths")
    ap.add_argument(
        "--variants",
        default="direct,gradual (default),gradual + learned bits,ctmq,"
        "gradual run cosine frozen BN,ctmq run cosine frozen BN,direct frozen BN",
    )
    ap.add_argument("--mean-bits", default="2,2.25,3",
                    help="ResNet-20 plans (mean weight bits; 2 is uniform, 2 being the lowest)")  # fmt: skip
    ap.add_argument("--train-size", type=int, default=10_000, help="ResNet-20 training subset")
    ap.add_argument("--r56-train-size", type=int, default=20_000)
    ap.add_argument("--r56-variants", default="gradual (default),gradual run cosine frozen BN",
                    help="ResNet-56 recipes")  # fmt: skip
    ap.add_argument(
        "--threads", type=int, default=THREADS, help="torch threads (1 beside another job)"
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--work-dir", type=Path,
                    default=Path(tempfile.gettempdir(), "hawq_bench_finetune"))  # fmt: skip
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--table-only", action="store_true",
                    help="rewrite the table from the finished fine-tunes; run nothing")  # fmt: skip
    args = ap.parse_args()
    args.epochs = [int(e) for e in args.epochs.split(",")]
    args.mean_bits = [float(b) for b in args.mean_bits.split(",")]
    args.variants = args.variants.split(",")
    args.r56_variants = args.r56_variants.split(",")
    warnings.simplefilter("ignore")
    setup_torch(args.threads)
    header = Header()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    store = Store(args.work_dir / "finetunes.json")
    if args.table_only:  # the table's command is the one that runs every part
        header.command = "python benchmarks/bench_finetune.py"
        write_table(store, header, args, args.out_dir)
        return
    parts = args.parts.split(",")
    runs = store.data.get("_invocations", [])
    store.put("_invocations", [*runs, {"command": header.command, "date": header.date,
                                       "loadavg_start": header.load_start}])  # fmt: skip
    if "throughput" in parts:
        part_throughput(args, args.work_dir, store)
    if {"resnet20", "resnet56"} & set(parts):
        probe = pipeline("resnet20", (4,), args.work_dir / "resnet20")
        lossless = load_subset("imagefolder", str(LOSSLESS), "test",
                               probe.loaded.preprocess, 0, 0)  # fmt: skip
        log(f"lossless/test: {len(lossless)} images ({display_path(LOSSLESS / 'test')})")
        for name in parts:
            fn = {"resnet20": part_resnet20, "resnet56": part_resnet56}.get(name)
            if fn is not None:
                fn(args, args.work_dir, store, lossless)
                write_table(store, header, args, args.out_dir)
    write_table(store, header, args, args.out_dir)


if __name__ == "__main__":
    main()
