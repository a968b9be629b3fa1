"""Prediction/reference file formats, id pairing, and the CLI's handling of bad files (no models, no Java)."""

from __future__ import annotations

import json

import pytest

from avlformer.cli import main as avlformer_main
from avlformer.evaluation.references import CaptionFileError, id_stem, load_predictions, load_references, \
    pair_captions


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_predictions_from_coco_list_and_dict_agree(tmp_path):
    as_list = write_json(tmp_path / "list.json", [{"image_id": "test/a.mp4", "caption": "a dog"},
                                                  {"image_id": 7, "caption": "a cat"}])
    as_dict = write_json(tmp_path / "dict.json", {"test/a.mp4": "a dog", "7": "a cat"})
    assert load_predictions(as_list) == {"test/a.mp4": "a dog", "7": "a cat"}
    assert load_predictions(as_dict) == load_predictions(as_list)


def test_references_from_coco_dict_coco_list_and_tsv_agree(tmp_path):
    annotations = [{"image_id": "test/a.mp4", "caption": "a dog runs", "id": 0},
                   {"image_id": "test/a.mp4", "caption": "a dog is running", "id": 1},
                   {"image_id": "test/b.mp4", "caption": "a cat sleeps", "id": 2}]
    coco_dict = write_json(tmp_path / "ref.json", {"annotations": annotations,
                                                   "images": [{"id": "test/a.mp4"}, {"id": "test/b.mp4"}],
                                                   "type": "captions"})
    coco_list = write_json(tmp_path / "ref_list.json", [{"image_id": a["image_id"], "caption": a["caption"]}
                                                        for a in annotations])
    tsv = tmp_path / "test.caption.tsv"
    tsv.write_text('test/a.mp4\t[{"caption": "a dog runs"}, {"caption": "a dog is running"}]\n'
                   'test/b.mp4\t[{"caption": "a cat sleeps"}]\n', encoding="utf-8")
    expected = {"test/a.mp4": ["a dog runs", "a dog is running"], "test/b.mp4": ["a cat sleeps"]}
    assert load_references(coco_dict) == expected
    assert load_references(coco_list) == expected
    assert load_references(tsv) == expected


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('[{"image_id": "a"}]', "'image_id' and 'caption'"),
    ('[{"image_id": "a", "caption": 3}]', "caption must be a string"),
    ('[{"image_id": "a", "caption": "x"}, {"image_id": "a", "caption": "y"}]', "more than one predicted caption"),
    ('{"annotations": []}', "COCO reference dict"),
    ('{"a": ["x"]}', "must be a string"),
    ('"text"', "expected a JSON list or object"),
])
def test_malformed_prediction_file_names_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "pred.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CaptionFileError) as caught:
        load_predictions(path)
    assert str(path) in str(caught.value) and problem in str(caught.value)


@pytest.mark.parametrize("name, content, problem", [
    ("ref.json", '{"images": []}', "'annotations' list"),
    ("ref.json", "[]", "no reference captions"),
    ("ref.json", '[{"image_id": "a", "caption": null}]', "caption must be a string"),
    ("ref.tsv", "a [caption]\n", "line 1: expected 'key<TAB>"),
    ("ref.tsv", 'a\t{"caption": "x"}\n', "line 1: caption column must be a JSON list"),
    ("ref.tsv", "a\t[not json\n", "line 1: caption column is not valid JSON"),
])
def test_malformed_reference_file_names_file_and_problem(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CaptionFileError) as caught:
        load_references(path)
    assert str(path) in str(caught.value) and problem in str(caught.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CaptionFileError, match="file not found"):
        load_references(tmp_path / "absent.json")


def test_id_stem():
    assert id_stem("test/abc.mp4") == "abc"
    assert id_stem("abc") == "abc"
    assert id_stem("a/b/c-d_e.webm") == "c-d_e"


def test_pairing_matches_exact_then_unique_stem_and_reports_the_rest():
    references = {"test/a.mp4": ["ra"], "test/b.mp4": ["rb"], "test/c.mp4": ["rc"], "x/d.mp4": ["rd"],
                  "y/d.mp4": ["rd2"]}
    predictions = {"test/a.mp4": "pa", "b": "pb", "z": "pz", "d": "pd"}
    paired = pair_captions(predictions, references)
    assert paired.predictions == {"test/a.mp4": "pa", "test/b.mp4": "pb"}
    assert paired.references == {"test/a.mp4": ["ra"], "test/b.mp4": ["rb"]}
    assert paired.matched_by_stem == 1
    # "d" is ambiguous (x/d.mp4 and y/d.mp4), so it is not guessed.
    assert paired.missing_predictions == ["test/c.mp4", "x/d.mp4", "y/d.mp4"]
    assert paired.extra_predictions == ["d", "z"]


def test_cli_rejects_malformed_file_with_its_name(tmp_path, capsys):
    pred = tmp_path / "pred.json"
    pred.write_text("[{\"image_id\": 1}]", encoding="utf-8")
    ref = write_json(tmp_path / "ref.json", [{"image_id": 1, "caption": "a dog"}])
    code = avlformer_main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "bleu"])
    assert code == 2
    assert str(pred) in capsys.readouterr().err


def test_cli_reports_no_overlap_and_missing_model_paths(tmp_path, capsys):
    pred = write_json(tmp_path / "pred.json", {"a": "a dog"})
    ref = write_json(tmp_path / "ref.json", [{"image_id": "b", "caption": "a dog"}])
    assert avlformer_main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "bleu"]) == 2
    err = capsys.readouterr().err
    assert "no id of" in err and "1 reference ids with no prediction" in err
    assert avlformer_main(["evaluate", "--pred", str(pred), "--ref", str(ref),
                           "--t5_model", str(tmp_path / "nowhere")]) == 2
    assert f"--t5-model {tmp_path / 'nowhere'}" in capsys.readouterr().err
