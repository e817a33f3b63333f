"""Read-time selection (beta, alpha, first step) and the published samples format."""

import json
import math

import pytest
import torch

from lightreasoner.models import tiny
from lightreasoner.data.prompts import encode_prompts
from lightreasoner.selection.select import export_samples, import_samples, select, selection_stats


def L(*p):
    return torch.tensor(p, dtype=torch.float32).log()


def record(problem_id, prompt, trace, kl, steps):
    """A scored trace from per-step (ids, pE, pA, max pE)."""
    ids, lpe, lpa, off = [], [], [], [0]
    for c_ids, pe, pa in steps:
        ids += c_ids
        lpe.append(L(*pe))
        lpa.append(L(*pa))
        off.append(off[-1] + len(c_ids))
    return {
        "problem_id": problem_id,
        "question_sha": "0" * 16,
        "prompt_ids": torch.tensor(prompt, dtype=torch.long),
        "trace_ids": torch.tensor(trace, dtype=torch.long),
        "finished": False,
        "kl": torch.tensor(kl, dtype=torch.float32),
        "max_logp_e": torch.stack([x[0] for x in lpe]),
        "cand_offsets": torch.tensor(off, dtype=torch.long),
        "cand_ids": torch.tensor(ids, dtype=torch.int32),
        "cand_logp_e": torch.cat(lpe),
        "cand_logp_a": torch.cat(lpa),
    }


@pytest.fixture
def recs():
    r0 = record(
        "toy/train/0", [10, 11, 12], [20, 21, 22, 23], [0.9, 0.1, 0.5, 0.4],
        [
            ([20, 30], (0.6, 0.3), (0.3, 0.3)),
            ([21], (0.9,), (0.5,)),
            ([22, 31, 32], (0.5, 0.3, 0.08), (0.25, 0.6, 0.01)),
            ([23, 33], (0.4, 0.2), (0.1, 0.4)),
        ],
    )
    r1 = record("toy/train/1", [10, 13], [24, 25], [0.1, 0.1], [([24], (0.7,), (0.7,)), ([25], (0.8,), (0.2,))])
    return [r0, r1]


def test_select_hand_values(recs):
    samples = select(recs, beta=0.4, alpha=0.2, first_step=1, alpha_min=0.1)
    assert len(samples) == 1  # the second trace has no step with KL >= 0.4
    s = samples[0]
    assert s.problem_id == "toy/train/0"
    assert s.steps.tolist() == [2, 3]  # KL >= beta (0.4 included), step 0 never (first_step=1)
    assert s.positions.tolist() == [4, 5]  # len(prompt) + t - 1
    assert s.input_ids.tolist() == [10, 11, 12, 20, 21, 22]  # truncated after the last kept position
    assert s.target_ids[0].tolist() == [22, 31]  # 32 (pE .08 < .2 * .5) is outside the tail set
    assert s.target_w[0].tolist() == pytest.approx([0.8, 0.2], abs=1e-6)  # softmax(ln 2, ln .5)
    assert s.target_ids[1].tolist() == [23, 33]
    assert s.target_w[1].tolist() == pytest.approx([8 / 9, 1 / 9], abs=1e-6)  # softmax(ln 4, ln .5)
    assert s.kl.tolist() == pytest.approx([0.5, 0.4])
    # the logits at positions[j] predict the kept token
    for p, t in zip(s.positions.tolist(), s.steps.tolist()):
        assert recs[0]["trace_ids"][t] == torch.cat([recs[0]["prompt_ids"], recs[0]["trace_ids"]])[p + 1]


def test_smaller_alpha_widens_tail_and_first_step_zero(recs):
    s = select(recs, beta=0.45, alpha=0.1, first_step=0, alpha_min=0.1)[0]
    assert s.steps.tolist() == [0, 2]
    assert s.positions.tolist() == [2, 4]
    assert s.target_w[0].tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    assert s.target_ids[1].tolist() == [22, 31, 32]
    assert s.target_w[1].tolist() == pytest.approx([2 / 10.5, 0.5 / 10.5, 8 / 10.5], abs=1e-6)
    everything = select(recs, beta=0.0, alpha=1.0, first_step=0, alpha_min=0.1)
    assert [x.num_steps for x in everything] == [4, 2]
    assert all(w.tolist() == [1.0] for x in everything for w in x.target_w)  # alpha = 1: the mode only


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(beta=-0.1, alpha=0.2), "selection.beta"),
        (dict(beta=0.4, alpha=-0.1), "selection.alpha"),  # (0 means no tail filter: the cache's alpha_min)
        (dict(beta=0.4, alpha=1.01), "selection.alpha"),
        (dict(beta=0.4, alpha=0.2, first_step=-1), "selection.first_step"),
        (dict(beta=0.4, alpha=0.05, alpha_min=0.1), r"below alpha_min=0.1 .*Re-score with sampling.alpha_min <= 0.05"),
    ],
)
def test_bad_selection_arguments(recs, kw, msg):
    kw.setdefault("alpha_min", 0.1)
    with pytest.raises(ValueError, match=msg):
        select(recs, **kw)


def test_selection_stats(recs):
    samples = select(recs, beta=0.4, alpha=0.2, first_step=1, alpha_min=0.1)
    st = selection_stats(recs, samples)
    h = lambda *w: -sum(x * math.log(x) for x in w)  # noqa: E731
    assert st["steps"] == 6 and st["kept_steps"] == 2
    assert st["kept_step_fraction"] == pytest.approx(2 / 6)
    assert st["kept_steps_per_trace"] == pytest.approx(1.0)
    assert st["mean_kl_kept"] == pytest.approx(0.45)
    assert st["mean_soft_label_entropy"] == pytest.approx((h(0.8, 0.2) + h(8 / 9, 1 / 9)) / 2, abs=1e-6)


@pytest.fixture(scope="module")
def tok():
    return tiny.build_char_tokenizer()


def char_record(tok, question, answer, system):
    prompt = encode_prompts(tok, [question], system)[0]
    trace = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    g = torch.Generator().manual_seed(len(answer))
    steps, kl = [], []
    for t, y in enumerate(trace):
        others = [i for i in torch.randperm(len(tok), generator=g).tolist() if i != y][:3]
        pe = torch.softmax(torch.randn(4, generator=g), 0).sort(descending=True).values.tolist()
        pa = torch.softmax(torch.randn(4, generator=g), 0).tolist()
        steps.append(([y] + others, pe, pa))
        kl.append(float(torch.rand(1, generator=g)))
    return record(f"toy/train/{len(question)}", prompt, trace, kl, steps)


def test_export_import_round_trip(tok, tmp_path):
    system = "Please reason step by step."
    qa = [("What is 2+2?", "2+2 = 4. The answer is 4."), ("Half of 18?", "18 / 2 = 9")]
    recs = [char_record(tok, q, a, system) for q, a in qa]
    samples = select(recs, beta=0.3, alpha=0.2, first_step=1, alpha_min=0.1)
    assert sum(s.num_steps for s in samples) >= 5
    questions = {r["problem_id"]: q for r, (q, _) in zip(recs, qa)}
    path = tmp_path / "samples.jsonl"
    n = export_samples(samples, path, tok, questions)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert n == len(rows) == sum(s.num_steps for s in samples)
    assert set(rows[0]) == {"prompt_id", "step", "prefix", "tokens", "token_ids", "weights", "kl_divergence"}
    assert rows[0]["prompt_id"] in dict(qa)
    assert rows[0]["tokens"] == [tok.decode([i]) for i in rows[0]["token_ids"]]

    imported = import_samples(path, tok, system_prompt=system)
    expected = [one for s in samples for one in s.split_steps()]
    assert len(imported) == len(expected)
    for got, want in zip(imported, expected):
        assert got.num_steps == 1
        assert got.input_ids.tolist() == want.input_ids.tolist()
        assert got.positions.tolist() == want.positions.tolist() == [len(got.input_ids) - 1]
        assert got.steps.tolist() == want.steps.tolist()
        assert got.target_ids[0].tolist() == want.target_ids[0].tolist()
        torch.testing.assert_close(got.target_w[0], want.target_w[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(got.kl, want.kl, atol=1e-6, rtol=0)


def test_export_is_atomic(tok, tmp_path):
    recs = [char_record(tok, "What is 2+2?", "4", "s")]
    samples = select(recs, beta=0.0, alpha=0.2, first_step=0, alpha_min=0.1)
    path = tmp_path / "out.jsonl"
    with pytest.raises(KeyError, match="no question text"):
        export_samples(samples, path, tok, {})
    assert not path.exists() and list(tmp_path.iterdir()) == []


GOOD = {"prompt_id": "What is 2+2?", "step": 3, "prefix": "2+2", "tokens": ["=", " "], "token_ids": [20, 5],
        "weights": [0.75, 0.25], "kl_divergence": 0.5}


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"weights": [0.75]}, "weights"),
        ({"weights": [0.5, 0.2]}, "weights"),
        ({"weights": [1.5, -0.5]}, "weights"),
        ({"token_ids": [20, -1]}, "token_ids"),
        ({"token_ids": []}, "token_ids"),
        ({"step": -2}, "step"),
        ({"step": "3"}, "step"),
        ({"prompt_id": 7}, "prompt_id"),
        ({"kl_divergence": "big"}, "kl_divergence"),
        ({"prefix": None}, "prefix"),
        ({"tokens": ["="]}, "tokens"),
    ],
)
def test_import_malformed_rows_name_line_and_field(tok, tmp_path, bad, field):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps({**GOOD, **bad}) + "\n")
    with pytest.raises(ValueError, match=rf"s.jsonl:3: field '{field}'"):
        import_samples(path, tok)


def test_import_missing_field_and_bad_json(tok, tmp_path):
    path = tmp_path / "s.jsonl"
    row = dict(GOOD)
    del row["weights"]
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r":2: field 'weights' is missing"):
        import_samples(path, tok)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r":1: not valid JSON"):
        import_samples(path, tok)
    path.write_text(json.dumps({**GOOD, "token_ids": [20, 500]}) + "\n")
    with pytest.raises(ValueError, match=r":1: field 'token_ids'.*500"):
        import_samples(path, tok, vocab_size=len(tok))
    assert len(import_samples(tmp_path / "s.jsonl", tok)) == 1  # fine without a width bound


def test_token_class_and_kept_step_profile():
    from lightreasoner.selection.select import kept_step_profile, token_class

    assert [token_class(t) for t in ("7", " 12", "3.5", " +", "=", " apples", "Tom's", "\n", ",", "<|im_end|>")] == [
        "digit", "digit", "digit", "operator", "operator", "word", "word", "other", "other", "other"]

    class Tok:  # decodes the trace tokens of the record below
        def decode(self, ids, skip_special_tokens=False):
            return "".join({20: "I", 21: " have", 22: "7", 23: " apples"}[i] for i in ids)

    # steps 2 and 3 kept (KL 0.5, 0.4 >= 0.4); at step 2 the amateur likes the generated token 22
    # (pA 0.9) so the contrast moves the label's argmax to 31; at step 3 it stays on 23
    r = record("toy/train/0", [10, 11, 12], [20, 21, 22, 23], [0.9, 0.1, 0.5, 0.4],
               [([20, 30], (0.6, 0.3), (0.3, 0.3)), ([21], (0.9,), (0.5,)),
                ([22, 31], (0.5, 0.3), (0.9, 0.05)), ([23, 33], (0.4, 0.2), (0.1, 0.4))])
    samples = select([r], beta=0.4, alpha=0.2)
    prof = kept_step_profile([r], samples, Tok(), span_starts={"toy/train/0": None})  # no answer cue (test_format_only.py)
    assert prof == {"label_argmax_differs": 0.5, "kept_digit_fraction": 0.5, "kept_operator_fraction": 0.0,
                    "kept_word_fraction": 0.5, "kept_other_fraction": 0.0,
                    "kept_in_answer_span": 0.0, "steps_in_answer_span": 0.0, "traces_with_answer_cue": 0.0}
