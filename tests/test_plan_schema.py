"""The published plan.json schema and the hardened loader: every bad plan is one line naming
its field, version 1 plans migrate to version 2, and saving is atomic.

Plans here are built by hand from LayerInfo objects (no model, no session)."""

from __future__ import annotations

import copy
import json
import math
import os
from importlib import resources

import pytest
from jsonschema import Draft202012Validator

from hawq_search.core.bits import ALLOWED_BITS
from hawq_search.core.exceptions import PlanVersionError, UserInputError
from hawq_search.core.layers import LayerInfo
from hawq_search.plan import (
    SCHEMA_VERSION,
    SIZE_DEFINITION,
    SUPPORTED_SCHEMA_VERSIONS,
    LayerPlan,
    Plan,
)
from hawq_search.plan_schema import MAX_DEPTH, field_path, load_plan_schema, validate_plan_dict

CONV = LayerInfo("conv1", "conv2d", 3, 4, (3, 3), (1, 1), (1, 1), 1, (3, 8, 8), (4, 8, 8),
                 (4, 3, 3, 3), False, 108, 108 * 64, "act:input", index=0)  # fmt: skip
FC = LayerInfo("fc", "linear", 4, 3, (1, 1), (1, 1), (0, 0), 1, (4,), (3,), (3, 4), True, 12,
               12, "act:fc", index=1)  # fmt: skip


def small_plan() -> Plan:
    layers = [
        LayerPlan("conv1", "conv2d", CONV.weight_shape, [4, 2, 8, 16], 8, CONV.act_group, 2.5,
                  True, predicted_loss_increase=1e-3, info=CONV),
        LayerPlan("fc", "linear", FC.weight_shape, [3, 32, 4], 8, FC.act_group, 1.75, False,
                  predicted_loss_increase=2e-4, info=FC),
    ]  # fmt: skip
    plan = Plan(
        model={
            "id": "tiny",
            "source": "python",
            "checkpoint": None,
            "input_shape": [3, 8, 8],
            "num_classes": 3,
            "preprocess": {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [3, 8, 8]},
        },
        layers=layers,
        budgets={"size_bytes": 500.0, "bops": None, "size_definition": SIZE_DEFINITION},
        provenance={
            "sensitivity": "fisher",
            "seed": 0,
            "search": {"search": "ilp-highs", "time_limit_s": 60.0, "mip_rel_gap": 1e-4},
        },
    )
    plan.recompute_totals()
    return plan


def v1_dict() -> dict:
    d = small_plan().to_dict()
    d["schema_version"] = 1
    del d["model"]["source"]
    del d["provenance"]["search"]
    return d


def load_error(d, tmp_path=None, exc=UserInputError) -> str:
    """The message of loading ``d`` (from a dict, or from a file when ``tmp_path`` is given)."""
    with pytest.raises(exc) as info:
        if tmp_path is None:
            Plan.from_dict(d)
        else:
            path = tmp_path / "plan.json"
            path.write_text(d if isinstance(d, str) else json.dumps(d))
            Plan.load(path)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 500, msg
    return msg


# ---- the schema itself --------------------------------------------------------------------


def test_schema_is_package_data_and_a_valid_draft_2020_12_schema():
    resource = resources.files("hawq_search.schemas").joinpath("plan.schema.json")
    assert resource.is_file()
    schema = json.loads(resource.read_text(encoding="utf-8"))
    assert schema == load_plan_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_schema_agrees_with_the_code():
    schema = load_plan_schema()
    assert tuple(schema["$defs"]["bits"]["enum"]) == ALLOWED_BITS
    assert tuple(schema["properties"]["schema_version"]["enum"]) == SUPPORTED_SCHEMA_VERSIONS
    assert SCHEMA_VERSION == 2 and SUPPORTED_SCHEMA_VERSIONS == (1, 2)
    info_props = schema["$defs"]["layer_info"]["properties"]
    assert set(info_props) == set(CONV.to_dict())  # closed object == the LayerInfo fields
    assert set(schema["$defs"]["layer_info"]["required"]) <= set(info_props)


def test_written_plans_validate_with_the_plain_standard_validator():
    d = small_plan().to_dict()
    assert d["schema_version"] == 2
    validate_plan_dict(d, "plan")  # the stricter validator used on load (tuples allowed)
    standard = Draft202012Validator(load_plan_schema())  # portable: any 2020-12 validator
    standard.validate(json.loads(json.dumps(d)))
    standard.validate(json.loads(json.dumps(v1_dict())))
    assert Plan.from_dict(d) == small_plan()


@pytest.mark.parametrize(
    ("path", "text"),
    [((), "(top level)"), (("model",), "model"), (("layers", 3, "w_bits", 5), "layers[3].w_bits[5]"),
     (("provenance", "a b"), 'provenance["a b"]')],
)  # fmt: skip
def test_field_path(path, text):
    assert field_path(path) == text


# ---- round trips and version 1 ------------------------------------------------------------


def test_v2_round_trip(tmp_path):
    plan = small_plan()
    path = tmp_path / "plan.json"
    plan.save(path)
    assert sorted(os.listdir(tmp_path)) == ["plan.json"]  # no temp file left
    loaded = Plan.load(path)
    assert loaded == plan and loaded.to_dict() == plan.to_dict()
    assert loaded.layers[0].info == CONV and loaded.model["source"] == "python"
    assert loaded.provenance["search"]["search"] == "ilp-highs"
    assert json.loads(path.read_text())["schema_version"] == 2
    assert loaded.recompute_totals() == plan.totals


def test_v1_plan_loads_migrated_and_saves_as_v2(tmp_path):
    d = v1_dict()
    before = copy.deepcopy(d)
    plan = Plan.from_dict(d)
    assert d == before  # the caller's dict is not modified
    assert plan.model["source"] == "registry" and "search" not in plan.provenance
    assert plan.to_dict()["schema_version"] == 2
    plan.save(tmp_path / "plan.json")
    again = json.loads((tmp_path / "plan.json").read_text())
    assert again["schema_version"] == 2 and again["model"]["source"] == "registry"
    assert Plan.load(tmp_path / "plan.json") == plan
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(before))
    assert Plan.load(path).model["source"] == "registry"


def test_v1_plan_keeps_a_source_it_already_has():
    d = v1_dict()
    d["model"]["source"] = "checkpoint"
    assert Plan.from_dict(d).model["source"] == "checkpoint"


def test_v2_plan_needs_model_source():
    d = small_plan().to_dict()
    del d["model"]["source"]
    assert "field model: 'source' is a required property" in load_error(d)


@pytest.mark.parametrize("version", [None, 0, 3, 99, "1", "2", True, 1.0, 2.5, [2]])
def test_unknown_schema_version_is_plan_version_error(version, tmp_path):
    d = small_plan().to_dict()
    if version is None:
        del d["schema_version"]
    else:
        d["schema_version"] = version
    msg = load_error(d, tmp_path, PlanVersionError)
    assert "schema_version" in msg and msg.startswith(f"plan file {tmp_path / 'plan.json'}")
    assert "schema_version" in load_error(d, None, PlanVersionError)


# ---- schema violations: one line, naming the field ----------------------------------------


def _set(path, value):
    def edit(d):
        *parents, last = path
        node = d
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


def _delete(path):
    def edit(d):
        *parents, last = path
        node = d
        for key in parents:
            node = node[key]
        del node[last]

    return edit


BAD = {
    "w_bits float": (_set(("layers", 0, "w_bits", 1), 2.7), "layers[0].w_bits[1]", "2.7 is not of type 'integer'"),
    "w_bits 4.0": (_set(("layers", 0, "w_bits", 1), 4.0), "layers[0].w_bits[1]", "integer"),
    "w_bits string": (_set(("layers", 1, "w_bits", 0), "4"), "layers[1].w_bits[0]", "integer"),
    "w_bits bool": (_set(("layers", 1, "w_bits", 2), True), "layers[1].w_bits[2]", "integer"),
    "w_bits 9": (_set(("layers", 0, "w_bits", 0), 9), "layers[0].w_bits[0]", "is not one of"),
    "w_bits 1": (_set(("layers", 0, "w_bits", 0), 1), "layers[0].w_bits[0]", "is not one of"),
    "w_bits empty": (_set(("layers", 0, "w_bits"), []), "layers[0].w_bits", "non-empty"),
    "w_bits not a list": (_set(("layers", 0, "w_bits"), 4), "layers[0].w_bits", "array"),
    "no w_bits": (_delete(("layers", 0, "w_bits")), "layers[0]", "'w_bits' is a required"),
    "a_bits 1": (_set(("layers", 0, "a_bits"), 1), "layers[0].a_bits", "is not one of"),
    "a_bits string": (_set(("layers", 0, "a_bits"), "8"), "layers[0].a_bits", "integer"),
    "a_bits float": (_set(("layers", 0, "a_bits"), 8.5), "layers[0].a_bits", "integer"),
    "act_clip inf": (_set(("layers", 1, "act_clip"), math.inf), "layers[1].act_clip", "inf is not a finite number"),
    "act_clip nan": (_set(("layers", 1, "act_clip"), math.nan), "layers[1].act_clip", "nan is not a finite number"),
    "act_clip negative": (_set(("layers", 1, "act_clip"), -1.0), "layers[1].act_clip", "minimum"),
    "act_clip huge": (_set(("layers", 1, "act_clip"), 1e7), "layers[1].act_clip", "maximum"),
    "act_clip string": (_set(("layers", 1, "act_clip"), "2.5"), "layers[1].act_clip", "number"),
    "act_signed int": (_set(("layers", 0, "act_signed"), 0), "layers[0].act_signed", "boolean"),
    "act_signed string": (_set(("layers", 0, "act_signed"), "false"), "layers[0].act_signed", "boolean"),
    "name int": (_set(("layers", 0, "name"), 3), "layers[0].name", "string"),
    "type unknown": (_set(("layers", 0, "type"), "lstm"), "layers[0].type", "is not one of"),
    "act_group null": (_set(("layers", 0, "act_group"), None), "layers[0].act_group", "string"),
    "weight_shape zero": (_set(("layers", 0, "weight_shape", 0), 0), "layers[0].weight_shape[0]", "minimum"),
    "weight_shape float": (_set(("layers", 0, "weight_shape", 1), 3.5), "layers[0].weight_shape[1]", "integer"),
    "weight_shape empty": (_set(("layers", 0, "weight_shape"), []), "layers[0].weight_shape", "non-empty"),
    "bytes negative": (_set(("layers", 0, "bytes"), -5), "layers[0].bytes", "minimum"),
    "model string": (_set(("model",), "resnet20"), "field model:", "'resnet20' is not of type 'object'"),
    "model no id": (_delete(("model", "id")), "field model:", "'id' is a required"),
    "model id int": (_set(("model", "id"), 20), "model.id", "string"),
    "input_shape 2d": (_set(("model", "input_shape"), [3, 32]), "model.input_shape", "too short"),
    "input_shape zero": (_set(("model", "input_shape", 1), 0), "model.input_shape[1]", "minimum"),
    "num_classes zero": (_set(("model", "num_classes"), 0), "model.num_classes", "minimum"),
    "num_classes bool": (_set(("model", "num_classes"), True), "model.num_classes", "integer"),
    "source unknown": (_set(("model", "source"), "hub"), "model.source", "is not one of"),
    "layers empty": (_set(("layers",), []), "field layers:", "non-empty"),
    "layers string": (_set(("layers",), "x"), "field layers:", "array"),
    "layers null": (_set(("layers",), None), "field layers:", "array"),
    "layer entry int": (_set(("layers", 1), 3), "layers[1]", "object"),
    "no layers": (_delete(("layers",)), "(top level)", "'layers' is a required"),
    "no model": (_delete(("model",)), "(top level)", "'model' is a required"),
    "info 0 channels": (_set(("layers", 0, "layer", "out_channels"), 0), "layers[0].layer.out_channels", "minimum"),
    "info params negative": (_set(("layers", 0, "layer", "params"), -1), "layers[0].layer.params", "minimum"),
    "info extra key": (_set(("layers", 0, "layer", "bogus"), 1), "layers[0].layer", "bogus"),
    "info missing op": (_delete(("layers", 0, "layer", "op")), "layers[0].layer", "'op' is a required"),
    "info only a name": (_set(("layers", 0, "layer"), {"name": "conv1"}), "layers[0].layer", "required"),
    "info string": (_set(("layers", 0, "layer"), "conv1"), "layers[0].layer", "object"),
    "info kernel triple": (_set(("layers", 0, "layer", "kernel_size"), [3, 3, 3]), "layers[0].layer.kernel_size", "too long"),
    "budgets string": (_set(("budgets",), "0.5 MB"), "field budgets:", "object"),
    "budget inf": (_set(("budgets", "size_bytes"), math.inf), "budgets.size_bytes", "inf"),
    "totals list": (_set(("totals",), []), "field totals:", "object"),
    "provenance int": (_set(("provenance",), 5), "field provenance:", "object"),
    "search string": (_set(("provenance", "search"), "ilp"), "provenance.search", "object"),
    "search negative limit": (_set(("provenance", "search", "time_limit_s"), -1), "provenance.search.time_limit_s", "minimum"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_schema_violation_is_one_line_naming_the_field(case, tmp_path):
    edit, field, detail = BAD[case]
    field = field if field.startswith("field ") else f"field {field}"
    d = small_plan().to_dict()
    edit(d)
    msg = load_error(d)
    assert msg.startswith(f"plan: {field}") and detail in msg, msg
    assert msg.endswith(": regenerate the plan or fix that field")
    if not any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(d)):
        file_msg = load_error(d, tmp_path)
        assert file_msg.startswith(f"plan file {tmp_path / 'plan.json'}: {field}")


def _leaves(d):
    stack = [d]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
        else:
            yield x


def test_the_documented_message_exactly(tmp_path):
    d = small_plan().to_dict()
    d["layers"][1]["w_bits"][2] = 2.7
    assert load_error(d) == (
        "plan: field layers[1].w_bits[2]: 2.7 is not of type 'integer': "
        "regenerate the plan or fix that field"
    )
    path = tmp_path / "plan.json"
    assert load_error(d, tmp_path) == (
        f"plan file {path}: field layers[1].w_bits[2]: 2.7 is not of type 'integer': "
        "regenerate the plan or fix that field"
    )


def test_big_offending_values_are_shortened():
    d = small_plan().to_dict()
    d["layers"] = {f"layer{i}": {"w_bits": [4] * 1000} for i in range(100)}
    msg = load_error(d)
    assert "field layers:" in msg and "is not of type 'array'" in msg and len(msg) < 300


def test_non_finite_numbers_in_a_file_are_rejected(tmp_path):
    text = json.dumps(small_plan().to_dict())
    for literal in ("1e400", "-1e400", "NaN", "Infinity"):
        bad = text.replace('"act_clip": 2.5', f'"act_clip": {literal}', 1)
        assert bad != text
        assert "field layers[0].act_clip" in load_error(bad, tmp_path)
    big = text.replace('"num_classes": 3', '"num_classes": 1e400', 1)
    assert "field model.num_classes" in load_error(big, tmp_path)


# ---- what the schema cannot say -----------------------------------------------------------


def test_layer_listed_twice_is_named():
    d = small_plan().to_dict()
    d["layers"].append(copy.deepcopy(d["layers"][0]))
    msg = load_error(d)
    assert "layers[2]" in msg and "'conv1' is listed twice" in msg


def test_w_bits_length_must_match_the_output_channels():
    d = small_plan().to_dict()
    d["layers"][0]["w_bits"] = d["layers"][0]["w_bits"][:-1]
    msg = load_error(d)
    assert "layers[0] (conv1)" in msg and "3 w_bits for weight_shape[0] = 4" in msg
    d = small_plan().to_dict()
    d["layers"][1]["w_bits"].append(8)  # without a layer description too
    d["layers"][1]["layer"] = None
    assert "4 w_bits for weight_shape[0] = 3" in load_error(d)


def test_layer_description_must_agree_with_the_plan_entry():
    d = small_plan().to_dict()
    d["layers"][0]["layer"]["out_channels"] = 5
    assert "layers[0] (conv1): 4 output channels but layer.out_channels = 5" in load_error(d)
    d = small_plan().to_dict()
    d["layers"][0]["layer"]["weight_shape"] = [4, 3, 1, 1]
    assert "differs from layer.weight_shape [4, 3, 1, 1]" in load_error(d)


def test_shared_activation_group_needs_one_bit_width():
    d = small_plan().to_dict()
    d["layers"][1]["act_group"] = d["layers"][0]["act_group"]
    assert Plan.from_dict(d)  # same a_bits: fine
    d["layers"][1]["a_bits"] = 4
    msg = load_error(d)
    assert "layers[1] (fc): a_bits 4 differs from a_bits 8 of conv1" in msg


def test_totals_are_recomputed_not_trusted():
    plan = small_plan()
    d = plan.to_dict()
    d["totals"] = {"bytes": 1, "mb": 1e-6, "avg_weight_bits": 2.0}
    for layer in d["layers"]:
        layer["bytes"], layer["bops"] = 1, 1
    loaded = Plan.from_dict(d)
    assert loaded.recompute_totals() == plan.totals
    assert [lp.bytes for lp in loaded.layers] == [lp.bytes for lp in plan.layers]


# ---- unreadable files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"\xff\xfe\x00{\x00}", "not UTF-8"), ('{"model": "caf\xe9"}'.encode("latin-1"), "not UTF-8"),
     (bytes(range(256)), "not UTF-8"), (b"\x00\x00\x00\x00{}", "binary"),
     (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8"), (b"", "not valid JSON"),
     (b'{"schema_version": 2, "layers": [', "not valid JSON (line 1)")],
)  # fmt: skip
def test_unreadable_bytes_are_one_line_errors(tmp_path, content, words):
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    with pytest.raises(UserInputError) as info:
        Plan.load(path)
    msg = str(info.value)
    assert "\n" not in msg and words in msg and str(path) in msg


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "plan.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(small_plan().to_dict()).encode())
    assert Plan.load(path) == small_plan()


def test_missing_file_and_directory(tmp_path):
    assert "does not exist" in load_error_path(tmp_path / "missing.json")
    assert "is a directory" in load_error_path(tmp_path)


def load_error_path(path) -> str:
    with pytest.raises(UserInputError) as info:
        Plan.load(path)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("depth", [100_000, 1_000])
def test_deeply_nested_json_file_is_a_user_error(tmp_path, depth):
    path = tmp_path / "plan.json"
    path.write_text("[" * depth + "]" * depth)
    msg = load_error_path(path)  # not a RecursionError traceback
    assert "nested" in msg or "not an object" in msg
    path.write_text('{"schema_version": 2, "provenance": ' + "[" * depth + "]" * depth + "}")
    assert "nested" in load_error_path(path)


def test_deeply_nested_dict_is_a_user_error():
    d = small_plan().to_dict()
    deep: list = []
    node = deep
    for _ in range(100_000):
        node.append([])
        node = node[0]
    d["provenance"]["notes"] = deep
    msg = load_error(d)
    assert "nested more than" in msg and str(MAX_DEPTH) in msg


def test_integer_literal_beyond_the_digit_limit(tmp_path):
    text = json.dumps(small_plan().to_dict()).replace(
        '"num_classes": 3', '"num_classes": ' + "9" * 5000
    )
    assert "not valid JSON" in load_error(text, tmp_path)


# ---- atomic save --------------------------------------------------------------------------


def test_failed_save_leaves_the_old_plan_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    plan = small_plan()
    plan.save(path)
    before = path.read_bytes()
    plan.layers[0].w_bits = [2, 2, 2, 2]

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        plan.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["plan.json"]


def test_unserializable_plan_writes_nothing(tmp_path):
    plan = small_plan()
    plan.provenance["bad"] = object()
    with pytest.raises(TypeError):
        plan.save(tmp_path / "plan.json")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_plan_has_the_usual_file_mode(tmp_path):
    umask = os.umask(0o027)
    try:
        small_plan().save(tmp_path / "plan.json")
    finally:
        os.umask(umask)
    assert (tmp_path / "plan.json").stat().st_mode & 0o777 == 0o640
