import torch

from leanformer.provenance import commit, device_name


def test_commit_is_the_checkout_or_what_the_environment_names(monkeypatch):
    monkeypatch.delenv("LEANFORMER_COMMIT", raising=False)
    here = commit()
    assert here == "unknown" or (len(here) >= 7 and all(c in "0123456789abcdef" for c in here))
    monkeypatch.setenv("LEANFORMER_COMMIT", "abc1234")
    assert commit() == "abc1234"


def test_device_name_says_cpu_and_its_cores():
    name = device_name(torch.device("cpu"))
    assert name.startswith("CPU (") and "cores" in name
