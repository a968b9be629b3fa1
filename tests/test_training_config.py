"""The typed training config: defaults in the tree only, `--help` says which applies, args.json round-trips,
the trainer modules form no cycle, and the benchmark report is written from records."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
import typing
from pathlib import Path

from avlformer.modeling.avlformer import AVLFormerConfig
from avlformer.training import cli as train_cli
from avlformer.training.args import parse_train_args
from avlformer.training.config import DataSettings, InitSettings, OptimSettings, RunSettings, ScstSettings, TrainConfig
from avlformer.training.flag_table import COMPAT, FLAGS, upstream_values

REPO = Path(__file__).resolve().parents[1]


def test_help_prints_the_default_that_applies_and_where_it_comes_from():
    parser = argparse.ArgumentParser(prog="avlformer train")
    train_cli.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "(default 0.1 from preset paper)" in text            # --lambda: the paper preset's, not a flag's 0.5
    assert "(default True from preset paper)" in text           # --learn-mask-enabled
    assert "(default 115 from preset paper; 40 from preset tiny)" in text  # --max-gen-length
    assert "(default 3e-05)" in text                            # --learning-rate: OptimSettings
    # the original's do-nothing flags are listed once, at the end, not offered as options
    assert "--use-cbs" in text and "--use-cbs USE_CBS" not in text and "[--use-cbs" not in text
    assert all(flag.option in parser.epilog for flag in COMPAT)


def test_defaults_live_in_the_tree_and_the_table_names_real_fields():
    defaults = TrainConfig()
    for flag in FLAGS:
        if flag.path is not None:
            *parents, leaf = flag.path.split(".")  # raises below if the table names a field the tree lacks
            owner = defaults.get(".".join(parents))
            annotation = typing.get_type_hints(type(owner))[leaf]
            # a flag converts its values by the type of its default: the default must have the annotated type
            assert isinstance(defaults.get(flag.path), typing.get_origin(annotation) or annotation), flag.name
    assert not any(field.name == "default" for field in dataclasses.fields(FLAGS[0]))
    resolved = parse_train_args([])
    assert resolved.model == AVLFormerConfig.paper()
    assert (resolved.init, resolved.data, resolved.scst, resolved.run) == (InitSettings(), DataSettings(),
                                                                          ScstSettings(), RunSettings())
    # the one resolved optimisation value: the global batch, from the per-process batch
    assert dataclasses.replace(resolved.optim, effective_batch_size=-1) == OptimSettings()
    assert resolved.optim.effective_batch_size == OptimSettings().per_gpu_train_batch_size


def test_args_json_values_read_back_as_a_config_file_give_the_same_config(tmp_path):
    config = parse_train_args(["--model_preset", "tiny", "--lambda_", "0.3", "--use_checkpoint", "--scst",
                               "--sc_train_sample_n", "3", "--output_dir", str(tmp_path / "out"),
                               "--data_dir", str(tmp_path), "--effective_batch_size", "8"])
    recorded = upstream_values(config)
    assert (recorded["lambda_"], recorded["max_num_frames"], recorded["use_checkpoint"]) == (0.3, 8, True)
    (tmp_path / "args.json").write_text(json.dumps(recorded))
    assert parse_train_args(["--config", str(tmp_path / "args.json")]) == config


def test_the_entry_picks_the_trainer_and_the_trainers_do_not_import_it():
    code = ("import sys; import avlformer.training.scst, avlformer.training.trainer; "
            "print('avlformer.training.loop' in sys.modules); sys.exit(1 if 'avlformer.training.loop' in sys.modules "
            "else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def load_report():
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_md_is_written_from_records_with_host_date_and_the_side_by_side_figures(tmp_path, monkeypatch):
    report = load_report()
    assert report.side_by_side("train_step")["original"] == {"seconds_per_step": 38.9, "peak_memory_gib": 12.1}
    assert report.side_by_side("caption_e2e")["date"] == "2026-12-07"
    results = tmp_path / "results"
    results.mkdir()
    (results / "side_by_side.jsonl").write_text((REPO / "benchmarks/results/side_by_side.jsonl").read_text())
    monkeypatch.setattr(report, "RESULTS_DIR", results)
    command = [sys.executable, "-c", "import json; print('noise'); print(json.dumps({'seconds_per_step': 27.5}))"]
    assert report.record("train_step", command) == 0
    entry = json.loads((results / "train_step.jsonl").read_text())
    assert entry["result"] == {"seconds_per_step": 27.5} and entry["date"] and entry["host"] is not None
    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    assert report.record("broken", failing) == 3 and not (results / "broken.jsonl").exists()
    text = report.write(tmp_path / "RESULTS.md").read_text()
    assert "| seconds_per_step | 27.5 |" in text and entry["date"] in text
    assert "38.9" in text and "35.7x" in text and "1.35x" in text and "2026-12-07" in text
