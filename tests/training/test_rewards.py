"""Rewards on hand-written decoded steps, including the cases the reference definition lets a policy game."""

import pytest
import torch

from atp_latent.training.rewards import (
    RewardWeights,
    accuracy_reward,
    coherence_reward,
    format_reward,
    step_result,
    total_reward,
)
from atp_latent.training.rl import group_advantages


def test_step_result():
    assert step_result("<<3*4=12>>") == "12"
    assert step_result("<<3*4=>>") == ""
    assert step_result("3*4") == ""


@pytest.mark.parametrize("steps,pred,strict,reference", [
    (["<<3*4=12>>", "<<12+5=17>>"], "17", 1.0, 1.0),           # chain used, last is the answer
    (["<<3*4=12>>", "<<12+5=17>>"], "18", 0.5, 0.5),           # last result not the answer
    (["<<3*4=12>>", "<<2+5=7>>"], "7", 0.5, 0.5),              # first result unused
    (["<<3*4=12>>", "<<5+2=7>>", "<<12-7=5>>"], "5", 1.0, 1.0),
    ([], "5", 0.0, 1.0),                                        # no steps: gameable in reference mode
    (["<<3*4=>>", "<<1+2=>>"], "3", 0.0, 1.0),                  # empty results match everything in reference
    (["<<3*4=2>>", "<<12+5=17>>"], "17", 0.5, 1.0),             # '2' is a substring of '12' (reference only)
    (["<<3*4=12>>", "<<1+1=12>>"], "12", 0.5, 1.0),             # strict: a result must be used as an operand
])
def test_coherence_modes(steps, pred, strict, reference):
    assert coherence_reward(steps, pred, "strict") == pytest.approx(strict)
    assert coherence_reward(steps, pred, "reference") == pytest.approx(reference)


def test_accuracy_format_and_total():
    assert accuracy_reward("1,234", "1234") == 1.0 and accuracy_reward("12", "13") == 0.0
    assert accuracy_reward(None, "1") == 0.0
    w = RewardWeights()
    assert total_reward(1, 1, 0.5, w) == pytest.approx(1 + 0.5 + 0.05)
    assert total_reward(0, 1, 1.0, w) == pytest.approx(0.5)  # coherence counts only when correct
    assert total_reward(0, 1, 0.5, RewardWeights(0.0, 0.5, 1.0), coherence_only=True) == pytest.approx(1.0)


@pytest.mark.parametrize("generated,expected", [
    # the text generated after <|end-latent|> (marker excluded), as our sequences write it: "### 9"
    ("### 9", 1.0),
    ("###9", 1.0),
    ("### 1,234.<|eot_id|>", 1.0),                  # trailing special token text cut, like extract_answer
    ("### 9\n<<3+4=7>>", 1.0),                       # only the first line is the answer
    ("  ### 9", 1.0),                                # leading spaces: a tokenizer may fold one into `###`
    ("\t### 9", 1.0),
    ("\n### 9", 0.0),                                # a newline before ### is text before the marker
    ("<<3+4=7>>\n### 7", 0.0),                       # a language step before ### (the old rule gave 1)
    ("The answer is ### 7", 0.0),                    # any other text before ### (the old rule gave 1)
    ("7", 0.0),                                      # no marker at all
    ("###", 0.0),                                    # marker, empty answer
    ("###   ", 0.0),
    ("### \n9", 0.0),                                # the answer must be on the marker's line
    ("### <|eot_id|>", 0.0),                         # only a special token after the marker
    ("### .", 0.0),
    ("", 0.0),
])
def test_format_reward(generated, expected):
    assert format_reward(generated) == expected


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, group_size=4)
    # group 1: mean 0.5, unbiased std sqrt(1/3)
    s = (1 / 3) ** 0.5
    torch.testing.assert_close(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (s + 1e-8))
    assert torch.equal(adv[4:], torch.zeros(4))  # equal rewards -> zero advantage
