"""The method registry (modeling/methods/): one entry per method, matching its configs and the flags,
budgets, labels and starts that the shared code used to choose by comparing method names."""

import dataclasses
from pathlib import Path

import pytest

from atp_latent.cli import main
from atp_latent.config import load_config
from atp_latent.data.records import Problem
from atp_latent.data.sequences import Curriculum, SequenceBuilder
from atp_latent.evaluation.evaluate import default_max_new_tokens
from atp_latent.modeling import methods
from atp_latent.modeling.methods import CONFIG_NAMES, METHODS, RL_METHODS, MethodDef, get_method, is_rl
from atp_latent.modeling.reasoner import METHODS as REASONER_METHODS
from atp_latent.modeling.reasoner import ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.suite import LABELS, STARTS

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "atp_latent" / "configs"
TIERS = ("quickstart", "cpu", "gpu", "paper")

# What ReasonerSpec.for_method gave before the registry: (use_vae, use_stop_head, use_decoder), latent,
# long answers (eval.cot_max_new_tokens), label, suite start.
EXPECTED = {
    "cot": ((False, False, False), False, True, "CoT-SFT", None),
    "nocot": ((False, False, False), False, False, "No-CoT", None),
    "icot": ((False, False, False), False, True, "iCoT", "cot"),
    "coconut": ((False, False, False), True, False, "Coconut", "cot"),
    "simcot": ((False, False, True), True, False, "SIM-CoT", "cot"),
    "atp": ((True, True, True), True, False, "ATP-Latent (SFT)", "cot"),
    "codi": ((False, False, False), True, False, "CODI", "cot"),  # + projector and teacher task (below)
    "colar": ((True, False, False), True, False, "CoLaR", "cot"),  # + the LM-head stop (below)
}


def test_registry_is_the_methods_with_configs():
    names = {load_config(str(path), []).method.name
             for tier in TIERS for path in sorted((CONFIGS / tier).glob("*.yaml"))}
    assert names == set(CONFIG_NAMES) == set(METHODS) | set(RL_METHODS)
    for name in METHODS:  # every method runs in the quickstart and the CPU bench
        for tier in ("quickstart", "cpu"):
            assert load_config(str(CONFIGS / tier / f"{name}.yaml"), []).method.name == name
    assert REASONER_METHODS == tuple(METHODS) and set(METHODS) == set(EXPECTED)  # EXPECTED: written by hand
    assert RL_METHODS == {"atp-rl": "atp", "colar-rl": "colar"} and is_rl("atp-rl") and not is_rl("atp")
    assert is_rl("colar-rl") and not is_rl("colar") and STARTS["colar_rl"] == "colar"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_method_flags_match_the_former_table(name):
    (vae, stop, decoder), latent, long_answers, label, start = EXPECTED[name]
    spec = ReasonerSpec.for_method(name, latents_per_step=2, max_latent_stage=3)
    assert (spec.use_vae, spec.use_stop_head, spec.use_decoder) == (vae, stop, decoder)
    assert spec.latent == latent == get_method(name).latent
    assert spec.eval_slots == (6 if latent else 0)
    assert default_max_new_tokens(name) == (160 if long_answers else 16)
    assert LABELS[name] == label and STARTS.get(name) == start
    # every other field keeps ReasonerSpec's default; an override that is None keeps the method's default
    assert (spec.use_projector, spec.use_teacher) == (name == "codi", name == "codi")
    assert spec.lm_head_stop == (name == "colar")
    assert dataclasses.replace(spec, use_vae=False, use_stop_head=False, use_decoder=False, use_projector=False,
                               use_teacher=False, lm_head_stop=False) == ReasonerSpec(method=name, latents_per_step=2,
                                                                                      max_latent_stage=3)
    assert ReasonerSpec.for_method(name, use_decoder=None).use_decoder == decoder
    assert ReasonerSpec.for_method(name, use_decoder=not decoder).use_decoder == (not decoder)


def test_saved_spec_loads():
    """reasoner.json is asdict(spec) with a `method` name: a checkpoint written before the registry loads alike."""
    saved = {"method": "atp", "latents_per_step": 2, "use_vae": True, "use_stop_head": True, "use_decoder": True,
             "decoder_mode": "separate", "decoder_trainable": True, "beta_kl": 0.001,
             "stop_loss_positions": "group_start", "stop_head_detached": False, "decoder_weight": 1.0,
             "latent_head_residual": False, "init_logvar": None, "max_latent_stage": 10}
    spec = ReasonerSpec(**saved)
    assert dataclasses.asdict(spec).items() >= saved.items() and spec.latent and spec.method_def is METHODS["atp"]
    assert not spec.use_projector and not spec.use_teacher  # fields added since (CODI's) keep their defaults


def test_unknown_method_is_one_line():
    with pytest.raises(ValueError) as err:
        get_method("bogus")
    assert str(err.value) == f"unknown method 'bogus' (known: {', '.join(METHODS)})"
    assert all(name in str(err.value) for name in EXPECTED)
    with pytest.raises(ValueError, match="known: cot, nocot"):
        ReasonerSpec.for_method("bogus")


def test_unknown_method_on_the_command_line(tmp_path, capsys):
    rc = main(["train", "--config", str(CONFIGS / "quickstart" / "cot.yaml"), "--output-dir", str(tmp_path),
               "--set", "method.name=bogus"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("error: ")
    assert "method.name" in err[0] and all(repr(n) in err[0] for n in CONFIG_NAMES)
    assert not any(tmp_path.iterdir())


def test_a_new_entry_is_all_the_shared_code_needs(monkeypatch):
    """A method registered with a long answer budget and no latents (iCoT's shape) reaches the spec, the sequence
    builder and the evaluation budget with no name check to add."""
    new = MethodDef(name="mine", label="Mine", chain="text", latent=False, long_answers=True,
                    spec_defaults={"use_decoder": True})
    monkeypatch.setitem(methods.METHODS, "mine", new)
    spec = ReasonerSpec.for_method("mine", max_latent_stage=3)
    assert spec.use_decoder and not spec.latent and spec.eval_slots == 0
    assert default_max_new_tokens("mine") == 160
    problem = Problem(question="Ann has 3 cats.", steps=["3+4=7", "7*2=14"], answer="14")
    builder = SequenceBuilder(build_word_tokenizer([problem.question, "<<3+4=7>>\n### 14"]), "mine",
                              Curriculum(max_latent_stage=3))
    assert builder.eval_prompt(problem.question)[1] == 0
    example = builder.build(problem, stage=2)  # chain "text": every step stays, whatever the stage
    assert example.n_slots == 0 and example.suffix == builder.build(problem, stage=0).suffix


def test_method_def_checks_chain_and_latent():
    with pytest.raises(ValueError, match="curriculum"):
        MethodDef(name="x", label="X", chain="curriculum", latent=False, long_answers=False)
