import pytest

from coder.config import PRESETS, ConfigError, apply_overrides, get_preset
from coder.model import build_model


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_on_meta(name):
    cfg = get_preset(name)
    model = build_model(cfg.model, device="meta")
    assert sum(p.numel() for p in model.parameters()) == cfg.model.num_params()


def test_paper_preset_has_1p733b_parameters():
    n = get_preset("paper-1.7b").model.num_params()
    assert abs(n - 1.733e9) / 1.733e9 < 0.005


def test_overrides_are_typed_and_unknown_keys_rejected():
    cfg = apply_overrides(get_preset("tiny"), ["model.n_layers=2", "lr=3e-4", "train.compile=true"])
    assert cfg.model.n_layers == 2 and cfg.train.lr == 3e-4 and cfg.train.compile is True
    with pytest.raises(ConfigError):
        apply_overrides(cfg, ["model.nope=1"])
    with pytest.raises(ConfigError):
        apply_overrides(cfg, ["model.n_layers=two"])
