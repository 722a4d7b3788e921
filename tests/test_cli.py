"""The command line: help, data check/synth, eval and explain on a checkpoint, one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from atp_latent.cli import main
from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer

COUNTS = {"gsm8k_train": 7473, "gsm8k_test": 1319, "gsm8k_aug_test": 1319, "gsm8k_aug_valid": 500,
          "gsm_hard": 1319, "svamp": 1000, "multiarith": 600}


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "atp_latent.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("data", "train", "eval", "explain", "quickstart"):
        assert cmd in out.stdout


def test_data_check_on_shared_files(shared_data, capsys):
    files = [str(shared_data / f"{name}.jsonl") for name in COUNTS]
    assert main(["data", "check", *files]) == 0
    out = capsys.readouterr().out
    for name, n in COUNTS.items():
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{name}.jsonl") or f"/{name}.jsonl" in ln.split()[0])
        assert f"records={n}" in line


@pytest.mark.parametrize("content,expect", [
    ('{"question": "q?", "answer": "1"}\nnot json\n', ":2: json:"),
    ('{"question": "", "answer": "1"}\n', ":1: question:"),
    ('{"question": "q?", "answer": "abc"}\n', ":1: answer:"),
    ('{"question": "q?"}\n', ":1: answer:"),
    ('{"question": "q?", "answer": "2", "steps": "1+1=2"}\n', ":1: steps:"),
    ('{"question": "q?", "answer": "2", "steps": ["1+1"]}\n', ":1: steps[0]:"),
    ("", ": file:"),
])
def test_data_check_bad_files_one_line_errors(tmp_path, content, expect, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    assert main(["data", "check", str(f)]) == 1  # in this process: an uncaught exception fails the test
    out = capsys.readouterr().out
    assert any(expect in line and line.startswith(str(f)) for line in out.splitlines()), out


def test_unreadable_path_and_unknown_format(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl: path:" in capsys.readouterr().out
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b\n1,2\n")
    assert main(["data", "check", str(odd)]) == 1
    assert "odd.csv" in capsys.readouterr().out


def test_bad_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lrr: 1\n")
    assert main(["train", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.lrr" in err[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An ATP checkpoint whose outputs differ per row (scaled-up random weights, a tokenizer that knows the data's
    words), and the synthetic data it is evaluated on."""
    from atp_latent.data.formats import load_records
    from atp_latent.training.sft import corpus_of

    root = tmp_path_factory.mktemp("cli")
    paths = write_benchmark(root / "data", SynthConfig(seed=1, n_train=20, n_val=8, n_test=6, n_ood=6))
    tok = build_word_tokenizer(corpus_of([p for f in paths.values() for p in load_records(f)]))
    torch.manual_seed(0)
    spec = ReasonerSpec.for_method("atp", latents_per_step=2, max_latent_stage=2)
    model = LatentReasoner(build_tiny_model("llama-tiny", tok), spec)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in list(model.lm.parameters()) + list(model.decoder.parameters()):
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * 1.5 / p.shape[1] ** 0.5)
        model.stop_head.mlp[2].bias.copy_(torch.tensor([0.0, -0.3]))
    model.save_pretrained(root / "run" / "final", tok)
    return root


def _script(k: int, gold: str) -> tuple[str, int, str | None, bool]:
    """Problem k's scripted answer text, latents used, the answer read from it, and whether that is correct."""
    g = str(int(float(gold)))
    return [(f"### {g}", 1, g, True), (f"### {int(g) + 1}", 2, str(int(g) + 1), False), (g, 3, None, False),
            (f"### 0\n### {g}", 4, g, True)][k % 4]


@pytest.fixture
def scripted_answers(checkpoint, monkeypatch):
    """Replace the generation (not the latent engine) by scripted answers, keyed by each problem's eval prompt."""
    from atp_latent.data.formats import load_records
    from atp_latent.data.sequences import builder_for
    from atp_latent.modeling.engine import Generation

    model, tok = LatentReasoner.from_pretrained(checkpoint / "run" / "final")
    builder = builder_for(tok, model.spec)
    script, n_tokens = {}, {}
    for split in ("test", "test_long"):
        for k, p in enumerate(load_records(checkpoint / "data" / f"{split}.jsonl")):
            text, n_lat, pred, ok = _script(k, p.answer)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids) == text
            script[tuple(builder.eval_prompt(p.question)[0])] = (ids, n_lat)
            n_tokens[split, k] = len(ids)

    def answer(self, prefix_ids, prefix_mask, n_slots, end_id, eos_id, pad_id, max_new_tokens, **kw):
        rows = [script[tuple(r[m.bool()].tolist())] for r, m in zip(prefix_ids, prefix_mask)]
        n_lat = torch.tensor([r[1] for r in rows])
        forced = torch.arange(int(n_slots.max()))[None] < n_lat[:, None]
        state = self.fill(prefix_ids, prefix_mask, n_slots, stop_mode="forced", forced_active=forced)
        width = max(len(r[0]) for r in rows) + 1
        tokens = torch.full((len(rows), width), pad_id)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            tokens[i, : len(r[0]) + 1] = torch.tensor(r[0] + [eos_id])
            mask[i, : len(r[0]) + 1] = True
        return state, Generation(tokens, torch.zeros(tokens.shape), mask, mask.sum(-1) - 1, 1)

    monkeypatch.setattr(LatentReasoner, "answer", answer)
    return n_tokens


def _predictions(out):
    return {r["id"]: r for r in map(json.loads, out.with_suffix(".predictions.jsonl").read_text().splitlines())}


def test_eval_scores_known_answers(checkpoint, scripted_answers, capsys):
    """`atp-latent eval` on answers whose correctness is known: accuracy, answer extraction (the last ###, a line's
    end), latent and answer-token counts, the format rate, per problem and in the summary; rows come back in input
    order although batches are sorted by prompt length."""
    from atp_latent.data.formats import load_records

    out = checkpoint / "res.json"
    data = checkpoint / "data"
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data", str(data / "test.jsonl"),
                 "--data", str(data / "test_long.jsonl"), "--out", str(out), "--batch-size", "4",
                 "--predictions"]) == 0
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"test", "test_long"}
    preds = out.with_suffix(".predictions.jsonl").read_text().splitlines()
    for split in ("test", "test_long"):
        problems = load_records(data / f"{split}.jsonl")
        rows = [json.loads(line) for line in preds if json.loads(line)["data"] == split]
        assert [r["id"] for r in rows] == [p.id for p in problems]
        expect = [_script(k, p.answer) for k, p in enumerate(problems)]
        n_tok = [scripted_answers[split, k] for k in range(len(problems))]
        for r, (text, n_lat, pred, ok), n in zip(rows, expect, n_tok):
            assert (r["output"], r["pred"], r["correct"], r["latents"], r["answer_tokens"]) == (text, pred, ok, n_lat, n)
        got = res["results"][split]
        N = len(problems)
        assert got["n"] == N
        assert got["accuracy"] == pytest.approx(sum(e[3] for e in expect) / N)
        assert got["format_rate"] == pytest.approx(sum(e[2] is not None for e in expect) / N)
        assert got["mean_latents"] == pytest.approx(sum(e[1] for e in expect) / N)
        assert got["mean_answer_tokens"] == pytest.approx(sum(n_tok) / N)
        assert got["mean_tokens"] == pytest.approx((sum(e[1] for e in expect) + sum(n_tok)) / N)
        # accuracy and latents by the problem's number of solution steps, from the scripted outcomes
        counts = sorted({len(p.steps) for p in problems})
        assert len(counts) > 1 or split == "test_long"
        for k in counts:
            group = [e for e, p in zip(expect, problems) if len(p.steps) == k]
            assert got["by_steps"][str(k)] == pytest.approx(
                {"accuracy": sum(e[3] for e in group) / len(group), "mean_latents": sum(e[1] for e in group) / len(group),
                 "problems": len(group)})
        assert list(got["by_steps"]) == [str(k) for k in counts]
    assert 0 < res["results"]["test"]["accuracy"] < 1
    printed = capsys.readouterr().out
    assert "| atp |" in printed and "test by solution steps: " in printed


def test_eval_all_latents_runs_every_slot(checkpoint, capsys):
    """--all-latents: the stop head is ignored, so every problem uses all 4 slots (2 stages x 2 latents) where the
    greedy evaluation stops some early; the answers are those of the same model whose stop head is made never to
    stop. Not with --rollout, which samples the stop head."""
    from atp_latent.data.formats import load_records
    from atp_latent.data.sequences import builder_for
    from atp_latent.evaluation.evaluate import evaluate

    data = checkpoint / "data" / "test.jsonl"
    outs = {}
    for flag in ([], ["--all-latents"]):
        out = checkpoint / f"res_all{len(flag)}.json"
        assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data", str(data), "--out", str(out),
                     "--max-new-tokens", "4", "--predictions", *flag]) == 0
        outs[bool(flag)] = [json.loads(line) for line in out.with_suffix(".predictions.jsonl").read_text().splitlines()]
        assert json.loads(out.read_text())["all_latents"] is bool(flag)
    assert any(r["latents"] < 4 for r in outs[False]) and all(r["latents"] == 4 for r in outs[True])
    model, tok = LatentReasoner.from_pretrained(checkpoint / "run" / "final")
    with torch.no_grad():
        model.stop_head.mlp[2].bias.copy_(torch.tensor([50.0, -50.0]))  # continue, always
    rows = evaluate(model, builder_for(tok, model.spec), load_records(data), max_new_tokens=4, progress=False)[1]
    assert [r["output"] for r in rows] == [r["output"] for r in outs[True]]
    assert [r["output"] for r in rows] != [r["output"] for r in outs[False]]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data", str(data), "--all-latents",
                 "--rollout"]) == 1
    assert "--all-latents ignores the stop head" in capsys.readouterr().err


def test_eval_sampled_latents_reports_mean_and_std_over_seeds(checkpoint):
    """--latent-sample --seeds 2: each number is the mean of the two seeds' evaluate() summaries, accuracy_std
    their sample standard deviation."""
    from atp_latent.data.formats import load_records
    from atp_latent.data.sequences import builder_for
    from atp_latent.evaluation.evaluate import evaluate

    out = checkpoint / "res_s.json"
    data = checkpoint / "data" / "test_long.jsonl"
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data", str(data), "--out", str(out),
                 "--latent-sample", "--seeds", "2", "--max-new-tokens", "3"]) == 0
    got = json.loads(out.read_text())["results"]["test_long"]
    assert got["seeds"] == 2
    model, tok = LatentReasoner.from_pretrained(checkpoint / "run" / "final")
    runs = [evaluate(model, builder_for(tok, model.spec), load_records(data), max_new_tokens=3, sample_latents=True,
                     seed=s, progress=False) for s in (0, 1)]
    assert [r["output"] for r in runs[0][1]] != [r["output"] for r in runs[1][1]]  # the seed matters
    for k in ("accuracy", "mean_tokens", "mean_latents", "mean_answer_tokens", "format_rate"):
        a, b = (getattr(s, k) for s, _ in runs)
        assert got[k] == pytest.approx((a + b) / 2), k
    assert got["accuracy_std"] == pytest.approx(abs(runs[0][0].accuracy - runs[1][0].accuracy) / 2 ** 0.5)


def test_eval_rollout_policy_reports_pass_at_k(checkpoint, capsys):
    """--rollout --seeds 2: each sample is evaluate() with RL's rollout policy (sampled latents, sampled stop,
    answer temperature); pass@1 is the mean accuracy and pass@2 the share of problems either sample got right."""
    from atp_latent.data.formats import load_records
    from atp_latent.data.sequences import builder_for
    from atp_latent.evaluation.evaluate import evaluate

    out = checkpoint / "res_r.json"
    data = checkpoint / "data" / "test_long.jsonl"
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data", str(data), "--out", str(out),
                 "--rollout", "--temperature", "0.7", "--seeds", "2", "--max-new-tokens", "3", "--predictions"]) == 0
    res = json.loads(out.read_text())
    got = res["results"]["test_long"]
    assert res["rollout"] and res["temperature"] == 0.7
    model, tok = LatentReasoner.from_pretrained(checkpoint / "run" / "final")
    problems = load_records(data)
    runs = [evaluate(model, builder_for(tok, model.spec), problems, max_new_tokens=3, sample_latents=True,
                     stop_mode="sample", temperature=0.7, seed=s, progress=False, plans=True)[1] for s in (0, 1)]
    written = [json.loads(line) for line in out.with_suffix(".predictions.jsonl").read_text().splitlines()]
    for s in (0, 1):  # every sample's rows, in order
        assert [r["output"] for r in written if r["sample"] == s] == [r["output"] for r in runs[s]]
    assert len(written) == 2 * len(problems)
    either = sum(a["correct"] or b["correct"] for a, b in zip(*runs)) / len(problems)
    assert got["pass_at_k"]["1"] == pytest.approx(got["accuracy"])
    assert got["accuracy"] == pytest.approx(sum(r["correct"] for rows in runs for r in rows) / (2 * len(problems)))
    assert got["pass_at_k"]["2"] == pytest.approx(either)
    # the plans the samples' latents decode to, against each problem's valid step orders (evaluation/diversity.py)
    from atp_latent.data.synthetic import valid_orders
    from atp_latent.evaluation.diversity import ProblemRollouts, diversity_summary

    expect = diversity_summary([ProblemRollouts(valid_orders(p), [(r[i]["plan"], r[i]["correct"]) for r in runs])
                                for i, p in enumerate(problems)])
    assert got["diversity"] == expect and expect["has_plans"] and expect["n_rollouts"] == 2
    printed = capsys.readouterr().out
    assert "pass@2" in printed and "test_long: plans valid " in printed and "invalid because: no plan " in printed


def test_eval_rollout_latent_temperature(checkpoint):
    """--latent-temperature K samples z ~ N(mu, (K sigma)^2): the CLI's samples are evaluate()'s with K, K changes
    them, and K = 0 gives mu's latents (with the stop head and answer tokens greedy: the greedy evaluation)."""
    from atp_latent.data.formats import load_records
    from atp_latent.data.sequences import builder_for
    from atp_latent.evaluation.evaluate import evaluate

    out = checkpoint / "res_k.json"
    data = checkpoint / "data" / "test_long.jsonl"
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data", str(data), "--out", str(out),
                 "--rollout", "--latent-temperature", "3", "--seeds", "1", "--max-new-tokens", "3",
                 "--predictions"]) == 0
    assert json.loads(out.read_text())["latent_temperature"] == 3.0
    model, tok = LatentReasoner.from_pretrained(checkpoint / "run" / "final")
    builder, problems = builder_for(tok, model.spec), load_records(data)

    def outputs(**kw):
        return [r["output"] for r in evaluate(model, builder, problems, max_new_tokens=3, progress=False, **kw)[1]]

    written = [json.loads(line)["output"] for line in out.with_suffix(".predictions.jsonl").read_text().splitlines()]
    hot = outputs(sample_latents=True, stop_mode="sample", temperature=1.0, latent_temperature=3.0)
    assert written == hot
    assert hot != outputs(sample_latents=True, stop_mode="sample", temperature=1.0, latent_temperature=1.0)
    assert outputs(sample_latents=True, latent_temperature=0.0) == outputs()


def test_eval_temperature_needs_rollout(checkpoint, capsys):
    data = checkpoint / "data" / "test_long.jsonl"
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data", str(data), "--temperature", "1"]) == 1
    assert "--temperature needs --rollout" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data", str(data), "--latent-temperature", "2"]) == 1
    assert "--latent-temperature needs --rollout" in capsys.readouterr().err


def test_eval_missing_benchmark_name_is_clear(checkpoint, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data", "gsm8k", "--data-dir", str(tmp_path)]) == 1
    assert "gsm8k_test.jsonl" in capsys.readouterr().err


def test_eval_by_name_on_real_benchmarks(checkpoint, shared_data, capsys):
    """Smoke test: benchmark names resolve to the shared files and every one evaluates (numbers: see above)."""
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data-dir", str(shared_data), "--limit", "4",
                 "--max-new-tokens", "2", "--data", "gsm8k", "--data", "gsm-hard", "--data", "svamp",
                 "--data", "multiarith"]) == 0
    assert "gsm-hard" in capsys.readouterr().out


def test_explain_prints_plan(checkpoint, capsys):
    """explain's answer and latent count for each problem are the greedy evaluation's."""
    from atp_latent.data.formats import load_records
    from atp_latent.data.sequences import builder_for
    from atp_latent.evaluation.evaluate import evaluate

    assert main(["explain", "--checkpoint", str(checkpoint / "run"), "--question", "Tom has 3 apples.",
                 "--data", str(checkpoint / "data" / "test.jsonl"), "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("Q: ") == 4 and "latent slots used" in out
    model, tok = LatentReasoner.from_pretrained(checkpoint / "run" / "final")
    _, rows = evaluate(model, builder_for(tok, model.spec), load_records(checkpoint / "data" / "test.jsonl")[:3],
                       progress=False)
    blocks = out.split("Q: ")[2:]
    for block, r in zip(blocks, rows):
        assert f"answer: {r['pred']}  (gold {r['gold']}, " in block
        assert f" {r['latents']} of 4 latent slots used" in block
        n_groups = sum(line.startswith("  latent group") for line in block.splitlines())
        assert n_groups == -(-r["latents"] // 2)
    # each group's sigma is the mean of exp(logvar / 2) over its 2 latents, read from the greedy fill
    from atp_latent.data.sequences import left_pad
    from atp_latent.evaluation.explain import explain

    q = load_records(checkpoint / "data" / "test.jsonl")[0].question
    e = explain(model, builder_for(tok, model.spec), [q])[0]
    prefix, slots = builder_for(tok, model.spec).eval_prompt(q)
    ids, mask = left_pad([prefix], tok.pad_token_id)
    with torch.no_grad():
        state = model.fill(ids, mask, torch.tensor([slots]))
    per_latent = torch.exp(0.5 * state.logvar[0]).mean(-1)
    want = [float(per_latent[2 * g: 2 * g + 2].mean()) for g in range(len(e["steps"]))]
    assert len(want) > 0 and e["sigma"] == pytest.approx(want, rel=1e-5)
    assert f"(slots 0-1, sigma {want[0]:.3f}): " in blocks[0]  # blocks[0] is that problem's printed plan


def test_explain_rejects_language_baseline(tmp_path, capsys):
    tok = build_word_tokenizer(["a b"])
    LatentReasoner(build_tiny_model("llama-tiny", tok), ReasonerSpec.for_method("cot")).save_pretrained(tmp_path / "c", tok)
    assert main(["explain", "--checkpoint", str(tmp_path / "c"), "--question", "a"]) == 1
    assert "no latent reasoning" in capsys.readouterr().err


def test_eval_sharded_over_two_processes_matches_one(checkpoint):
    """Two processes each evaluate their shard and gather the rows: every problem's prediction and the summary equal
    a 1-process evaluation (outputs differ per problem, so a duplicated or missing shard shows)."""
    data = checkpoint / "data" / "test_long.jsonl"
    outs = {n: checkpoint / f"shard{n}.json" for n in (1, 2)}
    args = ["eval", "--checkpoint", str(checkpoint / "run"), "--data", str(data), "--max-new-tokens", "4",
            "--predictions"]
    proc = subprocess.Popen([sys.executable, "-m", "atp_latent.cli", *args, "--out", str(outs[2]), "--num-processes",
                             "2", "--port", "29583"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert main([*args, "--out", str(outs[1])]) == 0
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    one, two = _predictions(outs[1]), _predictions(outs[2])
    assert sorted(one) == sorted(two) and len(one) == 6
    assert one == two
    assert len({r["output"] for r in one.values()}) > 3
    res = {n: json.loads(outs[n].read_text())["results"]["test_long"] for n in (1, 2)}
    assert res[1] == res[2]


def test_eval_rollout_sharded_over_two_processes(checkpoint):
    """--rollout --seeds 2 under two processes: each sample's rows are gathered from both shards before pass@k, so
    every problem counts once per sample (pass@1 is the mean accuracy, pass@2 the share right at least once)."""
    data = checkpoint / "data" / "test_long.jsonl"
    out = checkpoint / "shard_rollout.json"
    proc = subprocess.run([sys.executable, "-m", "atp_latent.cli", "eval", "--checkpoint", str(checkpoint / "run"),
                           "--data", str(data), "--max-new-tokens", "3", "--rollout", "--seeds", "2", "--predictions",
                           "--out", str(out), "--num-processes", "2", "--port", "29587"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())["results"]["test_long"]
    last = _predictions(out)  # the last sample's rows, gathered from both shards
    assert got["n"] == 6 and len(last) == 6
    assert got["pass_at_k"]["1"] == pytest.approx(got["accuracy"])
    assert got["pass_at_k"]["1"] <= got["pass_at_k"]["2"] <= 1.0
    assert got["pass_at_k"]["2"] >= sum(r["correct"] for r in last.values()) / 6
