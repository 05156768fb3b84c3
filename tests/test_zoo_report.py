"""The report (ped_fast.zoo.report) and the demo's verdict, on hand-made
results: the table, the CSV, the plot files, ground-truth files."""
import json
import math

import pytest

from ped_fast.zoo.demo import verdict
from ped_fast.zoo.report import format_table, json_safe, load_ground_truth, write_report


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
                                + "seconds,identity,warnings,error")
        assert csv_lines[4].startswith("broken,64,300,6,,,") and csv_lines[4].endswith("ValueError: bad")
        assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob(".*.tmp"))


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
