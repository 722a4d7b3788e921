from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from atp_latent.config import RunConfig, load_config
from atp_latent.configtools import (
    ConfigError,
    apply_overrides,
    compose,
    from_dict,
    load_yaml,
    load_yaml_dict,
    save_yaml,
    to_dict,
)

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "atp_latent" / "configs"


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
        ({"debug": "maybe"}, r"debug: expected bool, got 'maybe'"),
        ({"debug": 2.5}, r"debug: expected bool, got 2.5"),
        ({"model": {"name": [3]}}, r"model.name: expected str, got \[3\]"),
        ({"tag": {"a": 1}}, r"tag: expected str or null, got \{'a': 1\}"),
        ({"seed": None}, r"seed: expected int, got None"),
        ({"optim": None}, r"optim: expected mapping \(Optim\), got None"),
        ({"stages": 3}, r"stages: expected list\[int\], got 3"),
        ({"stages": [1, "x"]}, r"stages\[1\]: expected int, got 'x'"),
        ({"optim": 3}, r"optim: expected mapping \(Optim\), got 3"),
        ({"model": {"dtype": "fp16"}}, r"model.dtype: expected one of 'float32', 'bfloat16', got 'fp16'"),
    ],
)
def test_wrong_types(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_dict(Cfg, data, path="config.yaml")


def test_omegaconf_conversions():
    # OmegaConf's conversions: yes/no/on/off/1/0 for bools, numbers as text for strings
    cfg = from_dict(Cfg, {"debug": "yes", "tag": 5, "model": {"name": 3}})
    assert cfg.debug is True and cfg.tag == "5" and cfg.model.name == "3"
    assert from_dict(Cfg, {"debug": "off"}).debug is False and from_dict(Cfg, {"debug": 1}).debug is True


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
    assert out["optim"]["lr"] == pytest.approx(3e-4)  # 3e-4 is a float (YAML 1.1 would keep a string)
    cfg = from_dict(Cfg, out)
    assert cfg.optim.lr == pytest.approx(3e-4)
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


def test_yaml_no_on_yes_are_strings_not_booleans(tmp_path):
    @dataclass
    class P:
        mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
        switch: str = "x"
        flag: bool = True

    (tmp_path / "p.yaml").write_text("mixed_precision: no\nswitch: on\nflag: no\n")
    assert load_yaml(tmp_path / "p.yaml", P) == P("no", "on", False)
    assert compose(P, None, ["mixed_precision=no", "switch=yes", "flag=false"]) == P("no", "yes", False)
    assert load_yaml_dict(tmp_path / "p.yaml") == {"mixed_precision": "no", "switch": "on", "flag": "no"}


def test_run_config_mixed_precision_no_and_nulls():
    cfg = load_config(None, ["train.mixed_precision=no", "data.val=null", "method.use_vae=null", "data.max_val="])
    assert cfg.train.mixed_precision == "no"
    assert cfg.data.val is None and cfg.method.use_vae is None and cfg.data.max_val is None
    assert load_config(None, ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"
    with pytest.raises(ConfigError, match=r"^override 'train.epochs=null': train.epochs: expected int, got None$"):
        load_config(None, ["train.epochs=null"])
    with pytest.raises(ConfigError, match=r"train.mixed_precision: expected one of 'no', 'bf16', 'fp16', got 'fp8'"):
        load_config(None, ["train.mixed_precision=fp8"])


def test_run_config_report_to():
    assert load_config(None, []).train.report_to == ["tensorboard"]
    cfg = load_config(None, ["train.report_to=[tensorboard, wandb]"])
    assert cfg.train.report_to == ["tensorboard", "wandb"]
    assert load_config(None, ["train.report_to=[]"]).train.report_to == []
    with pytest.raises(ConfigError, match=r"report_to: unknown tracker 'tb' \(known: tensorboard, wandb, mlflow"):
        load_config(None, ["train.report_to=[tb]"])
    with pytest.raises(ConfigError, match=r"train.report_to: expected list\[str\], got 'wandb'"):
        load_config(None, ["train.report_to=wandb"])


def test_override_errors_name_the_override():
    with pytest.raises(ConfigError) as exc:
        compose(Cfg, None, ["seed=1", "optim.lr=fast"])
    assert str(exc.value) == "override 'optim.lr=fast': optim.lr: expected float, got 'fast'"
    with pytest.raises(ConfigError, match=r"^override 'optim.lrr=1': unknown key 'optim.lrr' \(valid: lr, "):
        compose(Cfg, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"^override 'seed.x=2': seed: expected int, got \{'x': 2\}$"):
        compose(Cfg, None, ["seed.x=2"])


def test_errors_name_the_file_of_the_defaults_chain_that_has_the_bad_value(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: abc\n")
    (tmp_path / "child.yaml").write_text("defaults: base.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"base.yaml: optim.lr: expected float, got 'abc'$"):
        load_yaml(tmp_path / "child.yaml", Cfg)
    (tmp_path / "base.yaml").write_text("optim:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"base.yaml: unknown key 'optim.lrr'"):
        load_yaml(tmp_path / "child.yaml", Cfg)


def test_defaults_list_merged_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("seed: 1\nstages: [1]\noptim:\n  lr: 0.5\n")
    (tmp_path / "b.yaml").write_text("seed: 2\noptim:\n  warmup_steps: 3\n")
    (tmp_path / "c.yaml").write_text("defaults: [a.yaml, b.yaml]\ntag: c\n")
    cfg = load_yaml(tmp_path / "c.yaml", Cfg, overrides=["stages=[7, 8]"])
    assert cfg.seed == 2 and cfg.tag == "c" and cfg.stages == [7, 8]  # lists are replaced, not appended
    assert cfg.optim == Optim(lr=0.5, warmup_steps=3)


def test_interpolation(tmp_path):
    (tmp_path / "i.yaml").write_text("tag: run-${seed}\nseed: 4\n")
    assert load_yaml(tmp_path / "i.yaml", Cfg).tag == "run-4"
    (tmp_path / "bad.yaml").write_text("tag: ${nope}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: tag: .*nope"):
        load_yaml(tmp_path / "bad.yaml", Cfg)


def test_duplicate_yaml_key_is_an_error(tmp_path):
    (tmp_path / "d.yaml").write_text("seed: 1\noptim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"d.yaml:4: YAML error: duplicate key 'lr'"):
        load_yaml(tmp_path / "d.yaml", Cfg)


@pytest.mark.parametrize("name", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*.yaml")
                                        if p.parent.name != "accelerate"))
def test_shipped_configs_load(name):
    cfg = load_config(str(CONFIGS / name))
    assert isinstance(cfg, RunConfig)
    merged = load_yaml_dict(CONFIGS / name)
    # every key written in the file (or its defaults chain) arrives in the RunConfig with the same value
    flat = to_dict(cfg)
    for section, values in merged.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert flat[section][key] == value, (section, key)
        else:
            assert flat[section] == values


def test_shipped_config_values():
    assert load_config(str(CONFIGS / "paper" / "atp_rl.yaml")).rl.lr == pytest.approx(1e-6)
    assert load_config(str(CONFIGS / "cpu" / "atp_rl_low_lr.yaml")).rl.lr == pytest.approx(1e-5)
    assert load_config(str(CONFIGS / "paper" / "atp.yaml")).train.mixed_precision == "bf16"
    bench = load_config(str(CONFIGS / "cpu" / "atp_no_kl.yaml"))
    assert bench.method.beta_kl == 0.0 and bench.train.epochs == 13 and bench.curriculum.max_latent_stage == 3
    # the bench's protocol: every latent method and SFT ablation runs the same curriculum and optimizer steps (but
    # atp_short, the quickstart's shorter schedule that gives RL room, atp_rl_room's start)
    latent = [load_config(str(p)) for p in sorted((CONFIGS / "cpu").glob("*.yaml"))
              if load_config(str(p)).method.name in ("atp", "coconut", "simcot") and p.stem != "atp_short"]
    assert len(latent) >= 7
    assert {(c.train.epochs, c.data.epoch_size, c.optim.batch_size, c.curriculum.epochs_per_stage,
             c.curriculum.max_latent_stage) for c in latent} == {(13, 12800, 32, 1, 3)}


def test_strings_round_trip_through_save_yaml(tmp_path):
    cfg = Cfg(tag="1e3", model=Model(name="no"))
    path = save_yaml(cfg, tmp_path / "c.yaml")
    assert "tag: '1e3'" in path.read_text() and "name: 'no'" in path.read_text()
    assert load_yaml(path, Cfg) == cfg
    assert load_yaml_dict(path)["tag"] == "1e3"


def test_nested_dataclass_instances_accepted():
    assert from_dict(Cfg, {"optim": Optim(lr=0.5)}).optim == Optim(lr=0.5)
