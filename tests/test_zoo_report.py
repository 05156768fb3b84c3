"""The report (ped_fast.zoo.report) and the demo's verdict, on hand-made
results: the table, the CSV, the plot files, ground-truth files."""
import json
import math

import pytest

from ped_fast.evaluate import evaluate
from ped_fast.zoo.demo import verdict
from ped_fast.zoo.report import (MEASURES, evaluation, format_evaluation, format_table, json_safe, load_ground_truth,
                                 write_report)


def results(truth=None):
    def row(name, sfda, ped, error=None, warnings=()):
        return {"name": name, "dim": 64, "n": 300, "steps": 6, "error": error, "warnings": list(warnings),
                "scores": {} if error else {"sfda": {"baseline": sfda, "ped": ped}}, "seconds": {"total": 1.5},
                "identity": f"sha256:{name}", "cached": []}

    out = {"scorers": ["sfda"], "models": [row("good", 0.8, 0.9), row("fair", 0.6, 0.95, warnings=["w1"]),
                                           row("poor", 0.5, 0.55), row("broken", 0, 0, error="ValueError: bad")],
           "warnings": [{"models": [], "message": "3 image(s) of the data folder could not be decoded"}]}
    if truth:
        from ped_fast.zoo.report import evaluation

        out["ground_truth"] = truth
        out["evaluation"] = evaluation(out, truth)
    return out


def test_table_lists_every_model_errors_and_warnings():
    lines = format_table(results()).splitlines()
    assert lines[0].split() == ["model", "D", "N", "steps", "SFDA", "PED+SFDA", "seconds"]
    assert lines[1].split() == ["good", "64", "300", "6", "0.8000", "0.9000", "1.50"]
    assert lines[2].endswith("*") and lines[4] == "broken failed: ValueError: bad"
    assert "  - 3 image(s) of the data folder could not be decoded" in lines
    assert "  - fair: w1" in lines


def test_evaluation_in_table_and_verdict():
    truth = {"good": 0.9, "fair": 0.7, "poor": 0.5, "broken": 0.1}
    table = format_table(results(truth)).splitlines()
    assert table[0].split()[-2:] == ["accuracy", "seconds"]
    ped_line = next(line for line in table if line.startswith("PED+SFDA "))
    sfda_line = next(line for line in table if line.startswith("SFDA "))
    assert sfda_line.split()[1:3] == ["1.000", "1.000"]  # plain SFDA orders the three as the accuracies do
    assert float(ped_line.split()[1]) < 1
    lines = verdict(results(truth))
    assert lines[0].startswith("PED+SFDA ranked the zoo worse than SFDA: weighted tau")
    assert lines[1] == "best ranking of this zoo: SFDA (weighted tau 1.000; 1 = the fine-tuning order)"


def test_report_files(tmp_path):
    for folder, truth in (("plain", None), ("truth", {"good": 0.9, "fair": 0.7, "poor": 0.5})):
        data = results(truth)
        paths = write_report(data, tmp_path / folder)
        assert [p.name for p in paths] == ["results.json", "results.csv", "ranking.png"]
        assert json.loads(paths[0].read_text())["models"][3]["error"] == "ValueError: bad"
        csv_lines = paths[1].read_text().splitlines()
        assert csv_lines[0] == ("name,dim,n,steps,SFDA,PED+SFDA," + ("accuracy," if truth else "")
                                + "seconds,identity,saturated,warnings,error")
        assert csv_lines[4].startswith("broken,64,300,6,,,") and csv_lines[4].endswith("ValueError: bad")
        assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob(".*.tmp"))


def leep_results():
    """Two scorers: sfda, saturated for one model, and leep (no PED score;
    no value for a model without a classifier head)."""
    def row(name, sfda, leep, saturated=None):
        return {"name": name, "dim": 8, "n": 6, "steps": 6, "error": None, "warnings": [], "seconds": {"total": 1.0},
                "identity": name, "cached": [],
                "scores": {"sfda": {"baseline": sfda, "ped": sfda, "saturated": {"baseline": saturated, "ped": None}},
                           "leep": {"baseline": leep, "ped": None, "saturated": {"baseline": None, "ped": None}}}}

    return {"scorers": ["sfda", "leep"], "warnings": [],
            "models": [row("x", 1.0, -0.5, saturated="sfda is 1"), row("y", 0.7, None), row("z", 0.6, -0.9)]}


def test_saturated_and_missing_scores_in_table_csv_and_plot(tmp_path):
    lines = format_table(leep_results()).splitlines()
    assert lines[0].split()[4:8] == ["SFDA", "PED+SFDA", "LEEP", "PED+LEEP"]
    assert lines[1].split()[4:8] == ["1.0000*", "1.0000", "-0.5000", "n/a"]
    assert lines[2].split()[6:8] == ["n/a", "n/a"]
    assert len({len(line) for line in lines[:4]}) == 1  # the marker keeps the columns aligned
    assert "value*: saturated" in lines[4]
    paths = write_report(leep_results(), tmp_path)
    csv_lines = paths[1].read_text().splitlines()
    assert csv_lines[1].split(",")[4:8] == ["1.0", "1.0", "-0.5", "n/a"]
    assert csv_lines[1].split(",")[-3] == "SFDA" and csv_lines[2].split(",")[-3] == ""
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluation_skips_missing_scores_and_adds_combined():
    data = leep_results()
    data["combined"] = {"minmax:sfda+leep": {"x": 0.5, "y": None, "z": 0.25}}
    truth = {"x": 0.9, "y": 0.2, "z": 0.5}
    table = evaluation(data, truth)
    assert table["leep"]["ped"] is None
    expected = evaluate({"x": -0.5, "z": -0.9}, {"x": 0.9, "z": 0.5}, ks=(1,))
    assert table["leep"]["baseline"] == {k: expected.get(k) for k in MEASURES}
    expected = evaluate({"x": 0.5, "z": 0.25}, {"x": 0.9, "z": 0.5}, ks=(1,))
    assert table["minmax:sfda+leep"] == {"combined": {k: expected.get(k) for k in MEASURES}}
    lines = format_evaluation(table).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["SFDA", "PED+SFDA", "LEEP", "minmax:sfda+leep"]


def test_json_safe_turns_nan_into_null():
    assert json_safe({"a": [1.0, math.nan, {"b": math.inf}], "c": "x"}) == {"a": [1.0, None, {"b": None}], "c": "x"}


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "must hold a JSON object"),
    ("{}", "an empty object"),
    ('{"a": "high"}', r"accuracies must be finite numbers, but \['a'\]"),
    ('{"a": 0.5,', "is not valid JSON"),
])
def test_ground_truth_file_errors(tmp_path, text, message):
    (tmp_path / "truth.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_ground_truth(tmp_path / "truth.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_ground_truth(tmp_path / "none.json")
