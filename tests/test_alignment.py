"""Cross-tokenizer contrast (model_pair.alignment=string): vocabulary alignment by normalised
token string, boundary mapping, aligned KL / candidates / soft labels against hand-computed
references, the sampler on two tokenizers that segment the same text differently, coverage
and its floor, and identical tokenizers giving exactly today's result."""

from __future__ import annotations

import math

import pytest
import torch

from lightreasoner.core import alignment as align
from lightreasoner.core import contrast
from lightreasoner.models import tiny
from lightreasoner.generation.base import Engine, GeneratedBatch
from lightreasoner.models.spec import ModelSpec, check_pair_tokenizers
from lightreasoner.models.pairs import PairSettings
from lightreasoner.data.prompts import encode_prompts
from lightreasoner.sampling.sampler import ContrastiveSampler, make_batch, question_sha
from lightreasoner.selection.select import select

from _tiny_pair import QUESTIONS, build_pair

SYSTEM = "Please reason step by step."
SETTINGS = dict(max_new_tokens=5, alpha_min=0.05, max_candidates=40, vocab_chunk=2, system_prompt=SYSTEM)
STRING = PairSettings(alignment="string", min_coverage=0.0)


def _tokenizers():
    """Two character tokenizers with different whole-word tokens (so different ids, and the
    same text segmented differently): "12" / "ab" for the expert, "23" / "bc" for the amateur."""
    return tiny.build_char_tokenizer(words=["12", "ab"]), tiny.build_char_tokenizer(words=["23", "bc", "q?"])


def _fast(vocab: dict, decoder):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.decoder = decoder
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")


# ----------------------------------------------------------------------------- vocabularies


def test_token_bytes_normalise_byte_level_and_sentencepiece_markers():
    from tokenizers import decoders

    byte_level = _fast({"[UNK]": 0, "Ġhas": 1, "Ċ": 2, "Ġ": 3, "ab": 4, "Ã©": 5}, decoders.ByteLevel())
    spm = _fast(
        {"[UNK]": 0, "<0x0A>": 1, "▁has": 2, "ab": 3, "▁": 4, "é": 5, "x": 6},
        decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]),
    )
    plain = _fast({"[UNK]": 0, " has": 1, "\n": 2}, decoders.Fuse())
    assert align.token_bytes(byte_level) == [None, b" has", b"\n", b" ", b"ab", "é".encode()]
    assert align.token_bytes(spm) == [None, b"\n", b" has", b"ab", b" ", "é".encode(), b"x"]
    assert align.token_bytes(plain) == [None, b" has", b"\n"]
    # byte-level expert, SentencePiece amateur: the same strings align whatever their markers and ids
    va = align.VocabAlignment.build(align.token_bytes(byte_level), align.token_bytes(spm))
    assert va.expert_to_amateur.tolist() == [-1, 2, 1, 4, 3, 5]
    assert va.aligned == 5 and va.expert_tokens == 5


def test_added_tokens_align_by_content_and_unknown_never_aligns():
    tok_e, tok_a = _tokenizers()
    te, ta = align.token_bytes(tok_e), align.token_bytes(tok_a)
    va = align.VocabAlignment.build(te, ta)
    vmap = va.expert_to_amateur
    for s in ("<|im_end|>", "<|im_start|>", "a", "7", " "):
        assert int(vmap[tok_e.convert_tokens_to_ids(s)]) == tok_a.convert_tokens_to_ids(s), s
    assert tok_e.convert_tokens_to_ids("a") != tok_a.convert_tokens_to_ids("a")  # really different ids
    assert int(vmap[tok_e.convert_tokens_to_ids("12")]) == -1 and int(vmap[tok_e.convert_tokens_to_ids("ab")]) == -1
    assert int(vmap[tok_e.unk_token_id]) == -1
    assert va.aligned == va.expert_tokens - 2


# ----------------------------------------------------------------------------- boundaries


def test_steps_are_scored_only_at_shared_token_boundaries():
    tok_e, tok_a = _tokenizers()
    aligner = align.TokenAligner(tok_e, tok_a)
    e = tok_e("x123", add_special_tokens=False)["input_ids"]
    assert tok_e.convert_ids_to_tokens(e) == ["x", "12", "3"]
    a, pos = aligner.amateur_inputs(e)
    assert tok_a.convert_ids_to_tokens(a) == ["x", "1", "23"]
    # y_<0 = "" -> a_<0; y_<1 = "x" -> a_<1; y_<2 = "x12" ends inside the amateur's "23": not scored
    assert pos == [0, 1, None]
    e2 = tok_e("abc 12<|im_end|>", add_special_tokens=False)["input_ids"]
    a2, pos2 = aligner.amateur_inputs(e2)
    assert tok_a.convert_ids_to_tokens(a2) == ["a", "bc", " ", "1", "2", "<|im_end|>"]
    assert pos2 == [0, None, 2, 3, 5]  # "ab" ends inside "bc"; "12" ends where "2" does
    # bytes that differ stop the mapping there (an unknown expert token, then nothing after it)
    unk = tok_e.unk_token_id
    assert align.boundary_positions([e[0], unk, e[2]], a, aligner.expert_bytes, aligner.amateur_bytes) == [0, 1, None]


# ----------------------------------------------------------------------------- the aligned math

# expert vocabulary and probabilities, amateur vocabulary (other ids) and probabilities
E_TOKENS = ["a", "b", "c", "12", "z"]
P_E = [0.40, 0.25, 0.20, 0.10, 0.05]
A_TOKENS = ["c", "a", "1", "b", "y", "w"]
P_A = [0.10, 0.50, 0.20, 0.10, 0.05, 0.05]


def _hand_case():
    va = align.VocabAlignment.build([s.encode() for s in E_TOKENS], [s.encode() for s in A_TOKENS])
    le = torch.tensor(P_E).log()
    la = torch.tensor(P_A).log()
    return va, le, la


def test_aligned_kl_equals_the_hand_computed_value():
    va, le, la = _hand_case()
    assert va.expert_to_amateur.tolist() == [1, 3, 0]  # a, b, c; "12" and "z" have no amateur token
    # KL over the aligned strings a, b, c: 0.4 ln(0.4/0.5) + 0.25 ln(0.25/0.1) + 0.2 ln(0.2/0.1)
    hand = 0.4 * math.log(0.4 / 0.5) + 0.25 * math.log(0.25 / 0.1) + 0.2 * math.log(0.2 / 0.1)
    assert hand == pytest.approx(0.278445, abs=1e-6)
    assert float(align.aligned_kl(le, la, va.expert_to_amateur)) == pytest.approx(hand, abs=1e-6)


def test_aligned_candidates_and_soft_labels_equal_the_hand_computed_values():
    va, le, la = _hand_case()
    # alpha_min 0.2: plausible = pE >= 0.08 = {a, b, c, "12"}; "12" has no amateur token
    ids, lpe, lpa, valid, mx, mass = align.aligned_candidates(le, la, va.expert_to_amateur, 0.2, 10)
    assert ids[valid].tolist() == [0, 1, 2]
    torch.testing.assert_close(lpa[valid], torch.tensor([0.5, 0.1, 0.1]).log())
    assert float(mx) == pytest.approx(math.log(0.4))
    assert float(mass) == pytest.approx((0.4 + 0.25 + 0.2) / (0.4 + 0.25 + 0.2 + 0.1), abs=1e-6)
    # soft label at alpha 0.3 (pE >= 0.12: a, b, c): softmax(ln pE - ln pA) = (0.8, 2.5, 2.0) / 5.3
    w = contrast.soft_label(lpe, lpa, mx, 0.3, valid)
    torch.testing.assert_close(w[valid], torch.tensor([0.8, 2.5, 2.0]) / 5.3, atol=1e-6, rtol=0)
    # alpha 0.6 (pE >= 0.24): a and b only
    w = contrast.soft_label(lpe, lpa, mx, 0.6, valid)
    torch.testing.assert_close(w[valid], torch.tensor([0.8, 2.5, 0.0]) / 3.3, atol=1e-6, rtol=0)


def test_identity_alignment_is_exactly_the_shared_math():
    g = torch.Generator().manual_seed(0)
    le = (torch.randn(3, 4, 40, generator=g) * 3).log_softmax(-1)
    la = (torch.randn(3, 4, 37, generator=g) * 3).log_softmax(-1)
    vmap = align.VocabAlignment.identity(37).expert_to_amateur
    assert torch.equal(align.aligned_kl(le, la, vmap), contrast.kl_shared(le, la))
    got = align.aligned_candidates(le, la, vmap, 0.05, 12)
    for x, y in zip(got[:5], contrast.top_candidates(le, la, 0.05, 12)):
        assert torch.equal(x, y)


# ----------------------------------------------------------------------------- the sampler


class FixedEngine(Engine):
    """Returns given traces (no logits: the sampler scores them with a teacher-forced expert pass)."""

    name = "fixed"

    def __init__(self, model, tokenizer, traces):
        super().__init__(model, tokenizer)
        self.traces = traces

    def generate_batch(self, prompt_ids, settings, return_logits=False, seed=None):
        width = max(len(t) for t in self.traces)
        rows = [t + [self.pad_token_id] * (width - len(t)) for t in self.traces[: len(prompt_ids)]]
        return GeneratedBatch(torch.tensor(rows, dtype=torch.long))


@pytest.fixture(scope="module")
def cross_pair():
    tok_e, tok_a = _tokenizers()
    expert = tiny.build_tiny_model(tok_e, seed=3)
    amateur = tiny.build_tiny_model(tok_a, seed=4, extra_vocab=2)
    with torch.no_grad():
        expert.lm_head.weight.mul_(20.0)
        amateur.lm_head.weight.mul_(20.0)
    traces = [
        tok_e("x123<|im_end|>", add_special_tokens=False)["input_ids"],  # "x" "12" "3" eos: step 2 not scored
        tok_e("abc 12", add_special_tokens=False)["input_ids"],  # "ab" "c" " " "12": step 1 not scored, no eos
    ]
    return tok_e, tok_a, expert, amateur, traces


def _cross_sampler(cross_pair, pair=STRING):
    tok_e, tok_a, expert, amateur, traces = cross_pair
    sampler = ContrastiveSampler(
        expert_model=expert, amateur_model=amateur, tokenizer=tok_e, amateur_tokenizer=tok_a, settings=SETTINGS, pair=pair
    )
    sampler.engine = FixedEngine(expert, tok_e, traces)
    return sampler


def _cross_batch(cross_pair, n=2):
    tok_e, tok_a = cross_pair[:2]
    qs = QUESTIONS[:n]
    return make_batch([f"toy/train/{i}" for i in range(n)], [question_sha(q) for q in qs],
                      encode_prompts(tok_e, qs, SYSTEM), encode_prompts(tok_a, qs, SYSTEM))


@torch.no_grad()
def test_cross_tokenizer_sampler_equals_a_per_step_string_reference(cross_pair):
    tok_e, tok_a, expert, amateur, traces = cross_pair
    batch = _cross_batch(cross_pair)
    records = _cross_sampler(cross_pair).predict_step(batch)
    a_vocab = {s: i for s, i in tok_a.get_vocab().items() if i != tok_a.unk_token_id}
    e_tokens = tok_e.convert_ids_to_tokens(list(range(len(tok_e))))
    expected_scored = [[0, 1, 3], [0, 2, 3]]
    alpha = 0.3
    for i, rec in enumerate(records):
        trace = traces[i]
        assert rec["trace_ids"].tolist() == trace[: len(rec["trace_ids"])]
        assert rec["finished"] == (i == 0)
        scored = (~torch.isnan(rec["kl"])).nonzero().flatten().tolist()
        assert scored == expected_scored[i]
        text = tok_e.decode(trace, skip_special_tokens=False)
        a_ids = tok_a(text, add_special_tokens=False)["input_ids"]
        off = rec["cand_offsets"]
        for t in range(len(trace)):
            a, b = int(off[t]), int(off[t + 1])
            if t not in scored:
                assert a == b and torch.isnan(rec["aligned_mass"][t])
                continue
            prefix = tok_e.decode(trace[:t], skip_special_tokens=False)
            j = next(j for j in range(len(a_ids) + 1) if tok_a.decode(a_ids[:j], skip_special_tokens=False) == prefix)
            le = expert(torch.tensor([batch["prompt_ids"][i] + trace[:t]])).logits[0, -1].log_softmax(-1)
            la = amateur(torch.tensor([batch["amateur_prompt_ids"][i] + a_ids[:j]])).logits[0, -1].log_softmax(-1)
            # the reference: a loop over the expert's token strings that the amateur also has
            pairs = [(v, a_vocab[s]) for v, s in enumerate(e_tokens) if s in a_vocab]
            kl = sum(float(le[v].exp()) * (float(le[v]) - float(la[u])) for v, u in pairs)
            assert float(rec["kl"][t]) == pytest.approx(kl, abs=1e-4), (i, t)
            thr = float(le.max()) + math.log(SETTINGS["alpha_min"])
            aligned = sorted(((v, u) for v, u in pairs if float(le[v]) >= thr), key=lambda vu: -float(le[vu[0]]))
            cands = aligned[: SETTINGS["max_candidates"]]
            assert 1 < len(cands) < len(pairs) // 2  # the tail filter really filters
            assert rec["cand_ids"][a:b].tolist() == [v for v, _ in cands], (i, t)
            torch.testing.assert_close(rec["cand_logp_a"][a:b], torch.stack([la[u] for _, u in cands]), atol=1e-4, rtol=0)
            plausible = [v for v in range(le.numel()) if float(le[v]) >= thr]
            mass = sum(float(le[v].exp()) for v, _ in aligned) / sum(float(le[v].exp()) for v in plausible)
            assert float(rec["aligned_mass"][t]) == pytest.approx(mass, abs=1e-5)
        # soft labels read from the records equal softmax(ln pE - ln pA) over the aligned plausible set
        sample = select([rec], beta=0.0, alpha=alpha, first_step=0, alpha_min=SETTINGS["alpha_min"])[0]
        assert sample.steps.tolist() == [t for t in scored]
        for t, ids, w in zip(sample.steps.tolist(), sample.target_ids, sample.target_w):
            a, b = int(off[t]), int(off[t + 1])
            lpe, lpa = rec["cand_logp_e"][a:b].double(), rec["cand_logp_a"][a:b].double()
            keep = lpe >= float(rec["max_logp_e"][t]) + math.log(alpha) - 1e-6
            z = torch.exp(lpe[keep] - lpa[keep])
            assert ids.tolist() == rec["cand_ids"][a:b][keep].tolist()
            torch.testing.assert_close(w.double(), z / z.sum(), atol=1e-5, rtol=0)


def test_identical_tokenizers_through_string_give_exactly_todays_records():
    tok, expert, amateur = build_pair()
    qs = QUESTIONS[:3]
    batch = make_batch([f"toy/train/{i}" for i in range(3)], [question_sha(q) for q in qs], encode_prompts(tok, qs, SYSTEM))
    settings = {**SETTINGS, "max_new_tokens": 8}
    shared = ContrastiveSampler(expert_model=expert, amateur_model=amateur, tokenizer=tok, settings=settings).predict_step(batch)
    sampler = ContrastiveSampler(expert_model=expert, amateur_model=amateur, tokenizer=tok, amateur_tokenizer=tiny.build_char_tokenizer(),
                                 settings=settings, pair=STRING)
    string = sampler.predict_step(batch)
    assert sampler._aligner is None  # one vocabulary: the amateur reads the expert's own ids
    for x, y in zip(shared, string):
        assert set(x) == set(y)
        for k in x:
            assert torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k], k


def test_shared_alignment_still_refuses_different_tokenizers(cross_pair):
    tok_e, tok_a = cross_pair[:2]
    with pytest.raises(ValueError, match="model_pair.alignment=string"):
        check_pair_tokenizers(tok_e, tok_a)
    assert check_pair_tokenizers(tok_e, tok_a, alignment="string").shared is False


# ----------------------------------------------------------------------------- the stage: key, manifest, floor


def _run(cross_pair, tmp_path, monkeypatch, pair):
    from lightreasoner.sampling import sampler as sampling_mod
    from lightreasoner.data.records import Problem

    tok_e, tok_a, expert, amateur, traces = cross_pair
    monkeypatch.setattr(sampling_mod, "build_engine", lambda cfg, model, tok, spec=None: FixedEngine(model, tok, traces))
    probs = [Problem(id=f"toy/train/{i}", question=QUESTIONS[i], answer="0", answer_type="numeric") for i in range(2)]
    return sampling_mod.run_sampling(
        ModelSpec("tiny/expert-words"), ModelSpec("tiny/amateur-words"), probs, {"name": "toy", "split": "train"},
        {**SETTINGS, "batch_size": 2, "beta": 0.0, "first_step": 0}, tmp_path,
        trainer_kwargs=dict(accelerator="cpu", devices=1, enable_progress_bar=False),
        models=(expert, amateur, tok_e, tok_a), pair=pair,
    )


def test_manifest_reports_coverage_and_the_floor_fails_with_one_line(cross_pair, tmp_path, monkeypatch):
    cache = _run(cross_pair, tmp_path, monkeypatch, STRING)
    cov = cache.manifest["coverage"]
    assert cov["steps"] == 8 and cov["steps_scored"] == 6
    assert cov["steps_scored_fraction"] == pytest.approx(6 / 8)
    # kept steps at the manifest's fixed reference selection (beta 0.4 from step 1), never a job's own
    assert cache.manifest["coverage_selection"] == {"beta": 0.4, "first_step": 1}
    from lightreasoner.core import alignment

    assert cov == alignment.coverage(cache.read_all(), 0.4, 1) and 0 < cov["aligned_mass_kept"] <= 1
    assert cache.fields["pair"] == {"alignment": "string"}
    recs = cache.read_all()
    assert all("aligned_mass" in r for r in recs)
    assert cache.manifest["kl"]["mean"] == pytest.approx(float(torch.cat([r["kl"] for r in recs]).nanmean()), rel=1e-5)
    # the same cache read again, with a floor above its coverage: one line naming the key
    with pytest.raises(ValueError, match=r"^model_pair.min_coverage: .* score 75.0% of steps") as err:
        _run(cross_pair, tmp_path, monkeypatch, PairSettings(alignment="string", min_coverage=0.8))
    assert "\n" not in str(err.value)
