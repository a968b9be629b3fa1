import pickle

import pytest
import torch
from safetensors.torch import save_file

from avlformer.modeling.weights_file import read_safetensors_shapes, read_weights_file


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_reads_torch_and_safetensors_files(tmp_path):
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64)}
    torch.save(tensors, tmp_path / "w.pt")
    save_file(tensors, str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        loaded = read_weights_file(tmp_path / name)
        assert set(loaded) == {"a", "b"} and torch.equal(loaded["a"], tensors["a"])


def test_refuses_pickled_code_and_names_the_file(tmp_path, capsys):
    path = tmp_path / "evil.bin"
    # torch.save's pickle protocol, so torch.load does not also warn about an unfamiliar one
    path.write_bytes(pickle.dumps({"w": _RunsCodeWhenUnpickled()}, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.bin: cannot be read with torch.load\(weights_only=True\)"):
        read_weights_file(path)
    assert "this must never run" not in capsys.readouterr().out


def test_missing_and_non_dict_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="PaSST checkpoint not found"):
        read_weights_file(tmp_path / "absent.pt", "PaSST checkpoint")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a dict checkpoint, got list"):
        read_weights_file(tmp_path / "list.pt")


def test_safetensors_shapes_come_from_the_header(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.zeros(5, dtype=torch.int64)}, str(path))
    assert read_safetensors_shapes(path) == {"a": (2, 3), "b": (5,)}
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match=r"truncated\.safetensors: cannot read safetensors weights"):
        read_safetensors_shapes(truncated)
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        read_safetensors_shapes(tmp_path / "absent.safetensors")
