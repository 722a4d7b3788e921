from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from atp_latent.configtools import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_yaml,
    load_yaml_dict,
    save_yaml,
    to_dict,
)


@dataclass
class Optim:
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0


@dataclass
class Model:
    name: str = "gpt2"
    dtype: Literal["float32", "bfloat16"] = "float32"
    num_latents: int = 4

    def __post_init__(self):
        if self.num_latents < 1:
            raise ValueError(f"num_latents must be >= 1, got {self.num_latents}")


@dataclass
class Cfg:
    seed: int = 0
    debug: bool = False
    tag: str | None = None
    out_dir: Path = Path("runs")
    stages: list[int] = field(default_factory=lambda: [1, 2])
    max_grad_norm: float | None = 1.0
    optim: Optim = field(default_factory=Optim)
    model: Model = field(default_factory=Model)


@dataclass
class Required:
    name: str
    count: int = 1


def test_defaults_when_empty():
    assert from_dict(Cfg, {}) == Cfg()
    assert from_dict(Cfg, None) == Cfg()


def test_nested_and_types():
    cfg = from_dict(
        Cfg,
        {
            "seed": 3,
            "debug": True,
            "tag": "x",
            "out_dir": "/tmp/o",
            "stages": [3],
            "max_grad_norm": None,
            "optim": {"lr": 2e-5, "weight_decay": 1},  # int accepted for float
            "model": {"dtype": "bfloat16"},
        },
    )
    assert cfg.seed == 3 and cfg.debug is True and cfg.tag == "x"
    assert cfg.out_dir == Path("/tmp/o")
    assert cfg.stages == [3]
    assert cfg.max_grad_norm is None
    assert cfg.optim == Optim(lr=2e-5, weight_decay=1.0)
    assert isinstance(cfg.optim.weight_decay, float)
    assert cfg.model == Model(dtype="bfloat16")


def test_unknown_key_names_dotted_path_and_valid_keys():
    with pytest.raises(ConfigError) as exc:
        from_dict(Cfg, {"optim": {"lrr": 1.0}}, path="config.yaml")
    msg = str(exc.value)
    assert msg.startswith("config.yaml: unknown key 'optim.lrr'")
    assert "valid: lr, weight_decay, warmup_steps" in msg
    assert "\n" not in msg


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match=r"unknown key 'sed'"):
        from_dict(Cfg, {"sed": 1})


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"optim": {"lr": "abc"}}, r"^config.yaml: optim.lr: expected float, got 'abc'$"),
        ({"seed": 1.5}, r"seed: expected int, got 1.5"),
        ({"seed": 2.0}, r"seed: expected int, got 2.0"),  # int-valued floats rejected too
        ({"seed": True}, r"seed: expected int, got True"),
        ({"optim": {"lr": True}}, r"optim.lr: expected float"),
        ({"debug": "yes"}, r"debug: expected bool, got 'yes'"),
        ({"debug": 1}, r"debug: expected bool"),
        ({"model": {"name": 3}}, r"model.name: expected str, got 3"),
        ({"tag": 5}, r"tag: expected str or null, got 5"),
        ({"stages": 3}, r"stages: expected list\[int\], got 3"),
        ({"stages": [1, "x"]}, r"stages\[1\]: expected int, got 'x'"),
        ({"optim": 3}, r"optim: expected mapping \(Optim\), got 3"),
        ({"model": {"dtype": "fp16"}}, r"model.dtype: expected one of 'float32', 'bfloat16', got 'fp16'"),
    ],
)
def test_wrong_types(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_dict(Cfg, data, path="config.yaml")


def test_strings_coerced_for_numeric_fields():
    cfg = from_dict(Cfg, {"seed": "7", "optim": {"lr": "3e-4", "warmup_steps": "10"}})
    assert cfg.seed == 7
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.warmup_steps == 10
    with pytest.raises(ConfigError, match="warmup_steps: expected int, got '1.5'"):
        from_dict(Cfg, {"optim": {"warmup_steps": "1.5"}})


def test_post_init_value_error_becomes_config_error():
    with pytest.raises(ConfigError) as exc:
        from_dict(Cfg, {"model": {"num_latents": 0}}, path="c.yaml")
    assert str(exc.value) == "c.yaml: model: num_latents must be >= 1, got 0"
    assert isinstance(exc.value, ValueError)


def test_missing_required_key():
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        from_dict(Required, {"count": 2})
    assert from_dict(Required, {"name": "a"}) == Required("a")


def test_top_level_must_be_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        from_dict(Cfg, [1, 2])


def test_round_trip(tmp_path):
    cfg = from_dict(
        Cfg, {"tag": "t", "stages": [5, 6], "optim": {"lr": 3e-4}, "model": {"dtype": "bfloat16"}}
    )
    d = to_dict(cfg)
    assert d["optim"] == {"lr": 3e-4, "weight_decay": 0.0, "warmup_steps": 0}
    assert d["out_dir"] == "runs"
    assert from_dict(Cfg, d) == cfg
    path = save_yaml(cfg, tmp_path / "sub" / "config.yaml")
    assert path.exists()
    assert load_yaml(path, Cfg) == cfg
    # field order preserved in the file
    text = path.read_text()
    assert text.index("seed:") < text.index("optim:") < text.index("model:")


def test_apply_overrides():
    data = {"optim": {"lr": 1e-3}, "seed": 1}
    out = apply_overrides(
        data,
        ["optim.lr=3e-4", "seed=5", "debug=true", "tag=null", "stages=[1, 2, 3]", "model.dtype=bfloat16"],
    )
    assert data == {"optim": {"lr": 1e-3}, "seed": 1}  # input not mutated
    assert out["optim"]["lr"] == "3e-4"  # YAML 1.1 keeps it a string ...
    cfg = from_dict(Cfg, out)
    assert cfg.optim.lr == pytest.approx(3e-4)  # ... and from_dict makes it a float
    assert cfg.seed == 5 and cfg.debug is True and cfg.tag is None
    assert cfg.stages == [1, 2, 3]
    assert cfg.model.dtype == "bfloat16"


def test_override_value_containing_equals():
    assert apply_overrides({}, ["tag=a=b"]) == {"tag": "a=b"}


@pytest.mark.parametrize("bad", ["optim.lr", "=3", "optim..lr=3", ".lr=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="malformed override"):
        apply_overrides({}, [bad])


def test_override_into_scalar_is_error():
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_override_unknown_key_caught_by_from_dict():
    data = apply_overrides({}, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        from_dict(Cfg, data)


def test_load_yaml_with_defaults_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "seed: 1\noptim:\n  lr: 1.0e-3\n  weight_decay: 0.1\nmodel:\n  name: base-model\n"
    )
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "mid.yaml").write_text("defaults: ../base.yaml\noptim:\n  lr: 2.0e-4\n")
    (tmp_path / "exp" / "child.yaml").write_text("defaults: mid.yaml\nseed: 3\nmodel:\n  num_latents: 6\n")
    cfg = load_yaml(tmp_path / "exp" / "child.yaml", Cfg)
    assert cfg.seed == 3
    assert cfg.optim == Optim(lr=2e-4, weight_decay=0.1)  # deep merge keeps weight_decay
    assert cfg.model == Model(name="base-model", num_latents=6)
    raw = load_yaml_dict(tmp_path / "exp" / "child.yaml")
    assert "defaults" not in raw


def test_load_yaml_with_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1.0e-3\n")
    cfg = load_yaml(tmp_path / "c.yaml", Cfg, overrides=["optim.lr=3e-4", "seed=9"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.seed == 9


def test_load_yaml_errors_mention_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_yaml(missing, Cfg)

    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\noptim:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError) as exc:
        load_yaml(bad, Cfg)
    assert "bad.yaml:" in str(exc.value) and "YAML syntax error" in str(exc.value)
    assert "\n" not in str(exc.value)

    typo = tmp_path / "typo.yaml"
    typo.write_text("optim:\n  lr: abc\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: optim.lr: expected float, got 'abc'"):
        load_yaml(typo, Cfg)

    (tmp_path / "child.yaml").write_text("defaults: nope.yaml\n")
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_yaml(tmp_path / "child.yaml", Cfg)


def test_yaml_syntax_error_reports_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\ndebug: false\nfoo: : :\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: YAML syntax error"):
        load_yaml(bad, Cfg)


def test_defaults_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: b.yaml\n")
    (tmp_path / "b.yaml").write_text("defaults: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_yaml(tmp_path / "a.yaml", Cfg)


def test_empty_yaml_gives_defaults(tmp_path):
    (tmp_path / "e.yaml").write_text("")
    assert load_yaml(tmp_path / "e.yaml", Cfg) == Cfg()
