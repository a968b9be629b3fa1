"""Prediction/reference file formats, id pairing, and the CLI's handling of bad files (no models, no Java)."""

from __future__ import annotations

import json

import pytest
import torch

from avlformer.cli import main as avlformer_main
from avlformer.data.clip_ids import clip_id_from_key
from avlformer.evaluation.references import CaptionFileError, load_predictions, load_references, pair_captions


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
    # The dict form with an id twice used to keep the last caption silently.
    ('{"a": "x", "b": "z", "a": "y"}', "key 'a' appears more than once"),
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
    ("ref.tsv", 'a\t[{"text": "x"}]\n', "line 1: expected a JSON list of"),
    ("ref.tsv", "a\t[not json\n", "line 1: caption column is not JSON"),
    ("ref.json", '{"annotations": [], "annotations": [{"image_id": "a", "caption": "x"}]}',
     "key 'annotations' appears more than once"),
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


def test_clip_id_rule_used_for_pairing():
    assert clip_id_from_key("test/abc.mp4") == "abc"
    assert clip_id_from_key("abc") == "abc"
    assert clip_id_from_key("a/b/c-d_e.webm") == "c-d_e"


def test_reference_tsv_rows_end_only_at_newline(tmp_path):
    # U+2028 / U+0085 are line breaks for str.splitlines but legal inside a caption.
    tsv = tmp_path / "test.caption.tsv"
    tsv.write_text('test/a.mp4\t[{"caption": "a dog\u2028runs\u0085fast"}]\r\n'
                   'test/b.mp4\t[{"caption": "a cat"}]\n', encoding="utf-8")
    assert load_references(tsv) == {"test/a.mp4": ["a dog\u2028runs\u0085fast"], "test/b.mp4": ["a cat"]}


def test_reference_tsv_that_is_not_utf8_is_named(tmp_path):
    tsv = tmp_path / "test.caption.tsv"
    tsv.write_bytes(b'test/a.mp4\t[{"caption": "caf\xe9"}]\n')
    with pytest.raises(CaptionFileError, match=r"test\.caption\.tsv: line 1: not UTF-8 text"):
        load_references(tsv)


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


def test_cli_rejects_a_folder_as_pred_or_ref_in_one_line(tmp_path, capsys):
    folder = tmp_path / "preds"
    folder.mkdir()
    ref = write_json(tmp_path / "ref.json", [{"image_id": "a", "caption": "a dog"}])
    assert avlformer_main(["evaluate", "--pred", str(folder), "--ref", str(ref), "--metrics", "bleu"]) == 2
    err = capsys.readouterr().err
    assert f"{folder}: prediction file expected, found a folder" in err and "Traceback" not in err
    pred = write_json(tmp_path / "pred.json", {"a": "a dog"})
    assert avlformer_main(["evaluate", "--pred", str(pred), "--ref", str(folder), "--metrics", "bleu"]) == 2
    assert f"{folder}: reference file expected, found a folder" in capsys.readouterr().err


@pytest.mark.parametrize("output", ["folder", "pred", "under_a_file", "in_a_checkpoint"])
def test_cli_checks_output_before_any_metric_runs(tmp_path, capsys, monkeypatch, output):
    import avlformer.evaluation.cli as evaluation_cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("metrics ran although --output cannot be written")

    monkeypatch.setattr(evaluation_cli, "evaluate", must_not_run)
    pred = write_json(tmp_path / "pred.json", {"a": "a dog"})
    ref = write_json(tmp_path / "ref.json", [{"image_id": "a", "caption": "a dog"}])
    (tmp_path / "out").mkdir()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")
    target = {"folder": tmp_path / "out", "pred": pred, "under_a_file": ref / "metrics.json",
              "in_a_checkpoint": tmp_path / "ckpt" / "config.json"}[output]
    expected = {"folder": "is a folder", "pred": "is one of the input files", "under_a_file": f"{ref} is not a folder",
                "in_a_checkpoint": f"lies inside the checkpoint folder {tmp_path / 'ckpt'}"}
    assert avlformer_main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "bleu",
                           "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"--output {target}: {expected[output]}" in err and "Traceback" not in err
    assert json.loads(pred.read_text(encoding="utf-8")) == {"a": "a dog"}


@pytest.mark.parametrize("device, problem", [
    ("banana", "--device banana: not a device"),
    pytest.param("cuda", "--device cuda: CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_cli_device_follows_the_one_device_rule(tmp_path, capsys, device, problem):
    # The old picker built torch.device(name) as given: a traceback for a typo, and no check that CUDA exists.
    pred = write_json(tmp_path / "pred.json", {"a": "a dog"})
    ref = write_json(tmp_path / "ref.json", [{"image_id": "a", "caption": "a dog"}])
    assert avlformer_main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "entity",
                           "--device", device]) == 2
    assert problem in capsys.readouterr().err


def test_cli_checks_the_passt_config_before_any_metric_runs(tmp_path, capsys, monkeypatch):
    import avlformer.evaluation.cli as evaluation_cli

    monkeypatch.setattr(evaluation_cli, "evaluate", lambda *a, **k: pytest.fail("metrics ran before the check"))
    pred = write_json(tmp_path / "pred.json", {"a": "a dog"})
    ref = write_json(tmp_path / "ref.json", [{"image_id": "a", "caption": "a dog"}])
    config = tmp_path / "passt.json"
    config.write_text("{not json", encoding="utf-8")
    assert avlformer_main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--trilip-passt-config",
                           str(config)]) == 2
    assert f"{config}: PaSST config JSON (--trilip-passt-config) is not valid JSON" in capsys.readouterr().err
