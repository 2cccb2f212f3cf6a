"""`x2x reproduce`: the paper's evaluation on phantom fixtures in the real file formats.

Known answers: the classifier architectures have the published parameter counts; weight files in the
release formats load without their classes (and a hostile one runs nothing); the metrics match hand
computations; with a constant-output pathology head and an edit that changes nothing, every number of the
report is known in advance; an interrupted run edits only the rows it had not finished.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from editor.evaluation.checkpoints import load_into, load_state_dict
from editor.evaluation.classifiers import XrvClassifiers, op_norm
from editor.evaluation.fid import frechet_distance
from editor.evaluation.fixtures import write_classifier_folder
from editor.evaluation.methods import Method, build_methods
from editor.evaluation.metrics import ScoredRow, bootstrap, cmig, compute, pathology_targets, pearson
from editor.evaluation.nets import DenseNet121, ResNet34, race_resnet34
from editor.evaluation.reproduce import ReproduceConfig, RunMismatch, run
from editor.evaluation.xrv_weights import AGE_FILE, PATHOLOGY_WEIGHTS, RACE_FILE, XRV_LABELS
from editor.instructions import parse_instruction
from editor.types import EditParams
from tests.support.mimic_tree import mimic_jpg_tree, paper_masks, release_tree

TINY = EditParams(steps=2, resolution=64)
def identity_method(folder: Path) -> Method:
    """RSE with an all-zero paper prior for every finding: G = 0 everywhere, nothing passes tau, so the
    edit changes no pixel and the counterfactual IS the source."""
    from editor.vocabulary import FINDINGS

    folder.mkdir(parents=True, exist_ok=True)
    for info in FINDINGS.values():
        np.save(folder / f"pseudo_mask_{info.paper_mask_name}.npy", np.zeros((512, 512), np.float32))
    return Method("identity", "RSE with an empty mask (zero prior)",
                  {"rse": True, "prior": "paper", "paper_prior_dir": str(folder)})
PHANTOM_LABELS = {"pleural effusion": "Effusion", "cardiomegaly": "Cardiomegaly", "lung opacity": "Lung Opacity",
                  "pneumothorax": "Pneumothorax"}


# ------------------------------------------------------------------------------------ architectures


def test_densenet121_and_resnet34_have_the_published_layouts() -> None:
    # torchvision's published parameter counts: densenet121 7,978,856; resnet34 21,797,672 (ImageNet heads)
    assert sum(p.numel() for p in DenseNet121(in_channels=3, num_classes=1000).parameters()) == 7_978_856
    assert sum(p.numel() for p in ResNet34().parameters()) == 21_797_672
    sd = DenseNet121().state_dict()  # torchxrayvision's: 1 channel, 18 outputs
    assert len(sd) == 727
    convs = [k for k in sd if k.endswith(".weight") and sd[k].ndim == 4]
    assert len(convs) == 120  # + the classifier = the 121 layers of DenseNet-121
    assert tuple(sd["features.conv0.weight"].shape) == (64, 1, 7, 7)
    assert tuple(sd["features.denseblock4.denselayer16.conv2.weight"].shape) == (32, 128, 3, 3)
    assert tuple(sd["features.transition3.conv.weight"].shape) == (512, 1024, 1, 1)
    assert tuple(sd["features.norm5.running_var"].shape) == (1024,)
    assert tuple(sd["classifier.weight"].shape) == (18, 1024)
    race = race_resnet34().state_dict()
    assert tuple(race["fc.0.weight"].shape) == (3, 512) and "layer4.2.bn2.num_batches_tracked" in race
    assert tuple(race["layer3.0.downsample.0.weight"].shape) == (256, 128, 1, 1)


def test_release_format_weight_files_load_without_their_classes(tmp_path: Path) -> None:
    # The pathology release files are whole modules pickled from torchxrayvision's own class.
    fake_pkg, fake_models = types.ModuleType("torchxrayvision"), types.ModuleType("torchxrayvision.models")
    fake_class = type("DenseNet", (DenseNet121,), {"__module__": "torchxrayvision.models"})
    fake_models.DenseNet = fake_class  # type: ignore[attr-defined]
    fake_pkg.models = fake_models  # type: ignore[attr-defined]
    sys.modules.update({"torchxrayvision": fake_pkg, "torchxrayvision.models": fake_models})
    try:
        torch.manual_seed(1)
        net = fake_class().eval()
        torch.save(net, tmp_path / "zip.pt")
        torch.save(net, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    finally:
        del sys.modules["torchxrayvision"], sys.modules["torchxrayvision.models"]
    x = torch.randn(2, 1, 224, 224) * 500
    with torch.no_grad():
        expected = net(x)
        for name in ("zip.pt", "legacy.pt"):
            loaded = DenseNet121().eval()
            load_into(loaded, load_state_dict(tmp_path / name), name)
            assert torch.equal(loaded(x), expected), name
    race = race_resnet34().eval()
    torch.save(torch.nn.DataParallel(race).state_dict(), tmp_path / "race.pt")  # keys module.*
    state = load_state_dict(tmp_path / "race.pt")
    assert all(not k.startswith("module.") for k in state)
    with pytest.raises(ValueError, match="do not fit"):
        load_into(DenseNet121(), state, "race file into a DenseNet")


def test_hostile_weight_file_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return (os.system, (f"touch {marker}",))

    torch.save({"weight": torch.ones(2), "payload": Evil()}, tmp_path / "evil.pt")
    state = load_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
    assert list(state) == ["weight"]


def test_classifier_folder_reports_what_is_missing(tmp_path: Path) -> None:
    folder = write_classifier_folder(tmp_path / "clf")
    (folder / AGE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="riken_xray_age.*nothing is downloaded"):
        XrvClassifiers.from_folder(folder)


def test_op_norm_maps_the_threshold_to_one_half() -> None:
    t = torch.tensor([[0.2, float("nan")]])
    out = op_norm(torch.tensor([[0.2, 0.9], [0.1, 0.9], [0.6, 0.1]]), t)
    assert out[0, 0] == 0.5 and out[1, 0] == pytest.approx(0.25) and out[2, 0] == pytest.approx(0.75)
    assert (out[:, 1] == 0.5).all()  # untrained label


# ------------------------------------------------------------------------------------------- metrics


def test_metrics_match_hand_computed_values() -> None:
    assert pathology_targets(parse_instruction("Remove the finding of left pleural effusion.")) == {"Effusion": 0}
    assert pathology_targets(parse_instruction("Add the findings of cardiomegaly and hernia.")) == {
        "Cardiomegaly": 1, "Hernia": 1}
    assert pathology_targets(parse_instruction("Change the level of edema from mild to severe.")) == {"Edema": 1}
    rows = [
        ScoredRow("a", "add", {"Effusion": 1}, {"Effusion": 0.9}, race_src=2, race_cf=2, age_src=50, age_cf=52),
        ScoredRow("b", "remove", {"Effusion": 0}, {"Effusion": 0.7}, race_src=1, race_cf=2, age_src=60, age_cf=61),
        ScoredRow("c", "add", {"Cardiomegaly": 1, "Hernia": 1}, {"Cardiomegaly": 0.4, "Hernia": 0.5},
                  race_src=0, race_cf=0, age_src=70, age_cf=66),
        ScoredRow("d", "add", {"Fracture": 1}, {"Fracture": math.nan}, race_src=2, race_cf=2, age_src=40, age_cf=45),
    ]
    m = compute(rows)
    # decisions: a correct, b wrong, c: cardiomegaly wrong, hernia correct (0.5 counts as present); d not scored
    assert m["decisions"] == 4 and m["pathology_accuracy"] == pytest.approx(2 / 4)
    assert m["pathology_accuracy_macro"] == pytest.approx((1 / 2 + 0 + 1) / 3)  # Effusion, Cardiomegaly, Hernia
    assert m["pathology_accuracy_remove"] == 0.0 and m["pathology_accuracy_add"] == pytest.approx(2 / 3)
    assert m["race_accuracy"] == pytest.approx(3 / 4)
    src, cf = np.array([50, 60, 70, 40.0]), np.array([52, 61, 66, 45.0])
    r = ((src - src.mean()) * (cf - cf.mean())).sum() / math.sqrt(((src - src.mean()) ** 2).sum()
                                                                 * ((cf - cf.mean()) ** 2).sum())
    assert m["age_correlation"] == pytest.approx(r) and m["age_mae"] == pytest.approx(12 / 4)
    assert m["cmig"] == pytest.approx(math.sqrt(0.5 * 0.75))
    assert m["cmig_harmonic"] == pytest.approx(2 * 0.5 * 0.75 / 1.25) and m["cmig_arithmetic"] == 0.625
    assert cmig(0.8, 0.9) == pytest.approx(0.848528137) and math.isnan(pearson([1, 2], [3, 4]))
    keys = [r.key for r in rows]
    ci = bootstrap({"m": rows}, keys, resamples=300, seed=3)
    assert ci == bootstrap({"m": rows}, keys, resamples=300, seed=3)  # seeded
    lo, hi = ci["m"]["race_accuracy"]
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0 and lo < hi


def test_fid_matches_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=(4000, 2))
    b = rng.normal(0.0, 1.0, size=(4000, 2)) * np.array([2.0, 3.0]) + np.array([1.0, -1.0])
    # independent Gaussians: FID = |dmu|^2 + sum (sigma_a - sigma_b)^2 = 2 + (1 + 4) = 7
    assert frechet_distance(a, b) == pytest.approx(7.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    few = rng.normal(size=(5, 64))  # fewer images than dimensions: still finite and symmetric
    other = rng.normal(size=(7, 64)) + 0.3
    assert frechet_distance(few, other) == pytest.approx(frechet_distance(other, few))


# -------------------------------------------------------------------------------------- the driver


def _table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_editor(tiny_model_dir: Path) -> Any:
    from editor.editor import Editor

    return Editor.from_pretrained(tiny_model_dir, device="cpu", dtype="float32")


def test_reproduce_v1_mimic_tree_known_answers(tmp_path: Path, tiny_editor: Any) -> None:
    extra = [
        {"split": "test", "current_dicom_id": "ph7-000000-current", "past_dicom_id": "ph7-000000-past",
         "instruction": "Add the findings of pleural effusion and cardiomegaly."},
        {"split": "test", "current_dicom_id": "ph7-000001-current", "past_dicom_id": "ph7-000001-past",
         "instruction": "Add the finding of unicorn."},
        {"split": "test", "current_dicom_id": "nowhere-current", "past_dicom_id": "nowhere-past",
         "instruction": "Add the finding of edema."},
    ]
    fx = mimic_jpg_tree(tmp_path / "data", n=3, extra_rows=extra)
    clf = XrvClassifiers.from_folder(write_classifier_folder(tmp_path / "clf", pathology_logits={"Effusion": 5.0}))
    cfg = ReproduceConfig(table=fx["table"], out=tmp_path / "out", methods=[build_methods(["ip2p"], tau=0.1,
                          tau_sweep=[], paper_masks=None)[0], identity_method(tmp_path / "zero-masks")],
                          base_params=TINY,
                          jpg_root=fx["jpg_root"], metadata=fx["metadata"], bootstrap=50, figure_rows=3,
                          model={"model_id": "tiny"})
    report = run(cfg, tiny_editor, classifiers=clf)

    assert report["rows"] == {"total": 6, "usable": 5, "skipped": {report_reason(report): 1}}
    by_name = {e["name"]: e for e in report["methods"]}
    assert set(by_name) == {"real", "ip2p", "identity"}
    # the constant head calls Effusion present and every other label absent, whatever the image
    decisions = []
    for row in _table(fx["table"])[:3] + extra[:1]:
        parsed = parse_instruction(row["instruction"])
        for name in parsed.finding_names:
            decisions.append((PHANTOM_LABELS[name] == "Effusion") == (parsed.operation != "remove"))
    expected = sum(decisions) / len(decisions)
    for name in ("real", "ip2p", "identity"):
        assert by_name[name]["metrics"]["pathology_accuracy"] == pytest.approx(expected), name
        assert by_name[name]["metrics"]["decisions"] == len(decisions)
    ident = by_name["identity"]
    assert ident["status"] == {"done": 4, "skipped": 2}
    assert ident["metrics"]["race_accuracy"] == 1.0 and ident["metrics"]["age_correlation"] == pytest.approx(1.0)
    assert ident["metrics"]["identical_outside"] == 1.0 and ident["metrics"]["change_all"] == 0.0
    assert ident["metrics"]["cmig"] == pytest.approx(math.sqrt(expected))
    assert by_name["ip2p"]["metrics"]["change_all"] > 0  # plain IP2P touches the whole image
    assert by_name["ip2p"]["fid"] >= 0 and by_name["ip2p"]["fid_images"] == 4

    header = (tmp_path / "out" / "identity" / "edits.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header))  # one column per name, or the CSV reader drops values
    lines = _table(tmp_path / "out" / "identity" / "edits.csv")
    assert {ln["status"] for ln in lines} == {"done", "skipped"}
    assert all(float(ln["coverage"]) == 0.0 for ln in lines if ln["status"] == "done")  # nothing passed tau
    unicorn = next(ln for ln in lines if "unicorn" in ln["instruction"])
    assert unicorn["status"] == "skipped" and "unknown finding" in unicorn["reason"]
    done = next(ln for ln in lines if ln["status"] == "done")
    assert json.loads(done["probs"])["Effusion"] > 0.5 and done["race"] in ("Asian", "Black", "White")
    assert "input_profile" in done and (tmp_path / "out" / "identity" / done["outputs"].split(";")[0]).is_file()
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| 89.35 |" in text and "90.99" in text and "83.23" in text and "SYNTHETIC" in text
    from PIL import Image

    with Image.open(tmp_path / "out" / "figure.png") as fig:
        assert fig.size == (160 * (2 + 2 * 2), 34 + 3 * (160 + 14))


def report_reason(report: dict[str, Any]) -> str:
    (reason,) = report["rows"]["skipped"]
    assert "not found" in reason
    return str(reason)


class CountingEditor:
    """The real editor, counting its edits and interrupted (like Ctrl-C) after `stop_after` of them."""

    def __init__(self, editor: Any, stop_after: int | None = None) -> None:
        self.editor, self.stop_after, self.calls = editor, stop_after, 0

    def edit(self, *args: Any, **kwargs: Any) -> Any:
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.editor.edit(*args, **kwargs)


def test_reproduce_resumes_where_it_stopped(tmp_path: Path, tiny_editor: Any) -> None:
    fx = mimic_jpg_tree(tmp_path / "data", n=4, v2=True, train_rows=0)
    method = build_methods(["anatomy"], tau=0.1, tau_sweep=[], paper_masks=None)[0]
    cfg = ReproduceConfig(table=fx["table"], out=tmp_path / "out", methods=[method], base_params=TINY,
                          jpg_root=fx["jpg_root"], metadata=fx["metadata"], bootstrap=0, figure_rows=0)
    first = CountingEditor(tiny_editor, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, first)
    edits = tmp_path / "out" / "anatomy" / "edits.csv"
    assert first.calls == 2 and len(_table(edits)) == 2
    second = CountingEditor(tiny_editor)
    report = run(cfg, second)
    assert second.calls == 2  # only the two rows not finished before
    lines = _table(edits)
    assert len(lines) == 4 and len({ln["key"] for ln in lines}) == 4
    assert report["methods"][1]["status"] == {"done": 4}
    # a line cut in half by a crash is dropped and its row redone, nothing else
    raw = edits.read_bytes()
    edits.write_bytes(raw[: len(raw) - 40])
    third = CountingEditor(tiny_editor)
    run(cfg, third)
    assert third.calls == 1 and len(_table(edits)) == 4
    with pytest.raises(RunMismatch, match="seed"):
        run(ReproduceConfig(**{**cfg.__dict__, "seed": 1}), CountingEditor(tiny_editor))


def test_reproduce_v2_release_layout_demo_model_paper_masks(tmp_path: Path) -> None:
    from editor.demo import demo_model_path
    from editor.editor import Editor

    demo = demo_model_path()
    assert demo is not None, "the demo model ships in the repository"
    editor = Editor.from_pretrained(demo, device="cpu", dtype="float32")
    data = release_tree(tmp_path / "release", n=3, v2=True)
    masks = paper_masks(tmp_path / "masks")
    methods = build_methods(["paper", "anatomy"], tau=0.1, tau_sweep=[0.3], paper_masks=str(masks))
    assert [m.name for m in methods] == ["paper", "anatomy", "anatomy-tau0.3"]
    cfg = ReproduceConfig(table=data, out=tmp_path / "out", methods=methods, base_params=EditParams(steps=4),
                          bootstrap=20, figure_rows=2)
    report = run(cfg, editor)  # no classifiers: locality only, said so
    assert report["classifiers"]["computed"] is False and "not computed" in (tmp_path / "out" / "report.md").read_text()
    by_name = {e["name"]: e for e in report["methods"]}
    assert by_name["paper"]["prior_sources"] == {"paper": 3}
    assert by_name["anatomy"]["prior_sources"] == {"anatomy": 3}
    for name in ("paper", "anatomy", "anatomy-tau0.3"):
        m = by_name[name]["metrics"]
        assert by_name[name]["status"] == {"done": 3}
        assert m["identical_outside"] == 1.0 and 0 < m["coverage"] < 1  # RSE: the source outside the mask
    assert by_name["anatomy-tau0.3"]["metrics"]["coverage"] <= by_name["anatomy"]["metrics"]["coverage"]
    # the paper's masks are fixed boxes: the edit mask never leaves its finding's box (resized 512 -> 96)
    for line in _table(tmp_path / "out" / "paper" / "edits.csv"):
        from PIL import Image

        mask = np.asarray(Image.open(tmp_path / "out" / "paper" / "images" / line["key"] / "mask.png")) > 0
        finding = parse_instruction(line["instruction"]).finding_names[0]
        box = np.load(masks / f"pseudo_mask_{PHANTOM_LABELS[finding]}.npy")
        box96 = np.asarray(Image.fromarray(box).resize((96, 96), Image.Resampling.BILINEAR)) > 0
        near_box = ndimage.binary_dilation(box96, iterations=2)  # resampling 512 -> 128 -> 96 blurs an edge
        assert mask.any() and not (mask & ~near_box).any(), line["instruction"]


def test_cli_reproduce(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dicom_node.cli import app
    from editor.demo import demo_model_path

    fx = mimic_jpg_tree(tmp_path / "data", n=2)
    clf = write_classifier_folder(tmp_path / "clf")
    runner = CliRunner()
    bad = runner.invoke(app, ["reproduce", str(fx["table"]), "--out", str(tmp_path / "bad"), "--methods", "paper"])
    assert bad.exit_code == 2 and "--paper-masks" in bad.output
    args = ["reproduce", str(fx["table"]), "--out", str(tmp_path / "out"), "--model", str(demo_model_path()),
            "--classifiers", str(clf), "--jpg-root", str(fx["jpg_root"]), "--metadata", str(fx["metadata"]),
            "--steps", "2", "--bootstrap", "10", "--methods", "ip2p,anatomy", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "CMIG" in result.output and "SYNTHETIC" in result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["model_id"] == "x2x-phantom-demo-v2"
    assert report["classifiers"]["pathology_weights"] == "densenet121-res224-all"
    assert Path(report["classifiers"]["files"]["race"]).name == RACE_FILE
    pathology_file = PATHOLOGY_WEIGHTS["densenet121-res224-all"].filename
    assert Path(report["classifiers"]["files"]["pathology"]).name == pathology_file
    assert len(XRV_LABELS) == 18


def test_bad_rows_are_skipped_with_their_reason(tmp_path: Path) -> None:
    from PIL import Image

    from editor.evaluation.reference import score_reference
    from editor.evaluation.rows import EvalRow, ImageLocator

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "garbage.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.full((32, 32), 100, np.uint8)).save(tmp_path / "images" / "fine.png")
    rows = [EvalRow(0, "test", "fine", "garbage", "Add the finding of edema."),
            EvalRow(1, "test", "fine", "../fine", "Add the finding of edema."),  # an id is never a path
            EvalRow(2, "test", "fine", "fine", "Add the finding of edema.")]
    lines = {ln["index"]: ln for ln in score_reference(rows, ImageLocator(tmp_path), tmp_path, None)}
    assert lines["0"]["status"] == "skipped" and "UnidentifiedImageError" in lines["0"]["reason"]
    assert lines["1"]["status"] == "skipped" and "not found" in lines["1"]["reason"]
    assert lines["2"]["status"] == "ok" and lines["2"]["probs_src"] == ""  # no classifiers: paths only
