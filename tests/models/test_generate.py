"""tunelab's decoding loop (models/generate.py `decode`) against transformers' `generate`, its sampler
against the distribution it claims, and the lower-precision rollout copy (models/inference_copy.py)."""
from __future__ import annotations

import pytest
import torch

from tunelab.models.generate import GenerationSettings, Generator, _draw, decode
from tunelab.models.generation import stop_token_ids


@pytest.fixture(scope="module")
def lora_qwen(tunelab_home):
    """tiny-qwen3 with a LoRA adapter whose B is not zero, so the adapters change every output."""
    from peft import LoraConfig, get_peft_model

    from tunelab.models.load import load_model, load_tokenizer

    torch.manual_seed(0)
    model = get_peft_model(load_model("tiny-qwen3"), LoraConfig(r=4, target_modules="all-linear",
                                                                init_lora_weights=False)).eval()
    return model, load_tokenizer("tiny-qwen3")


def prompts_of(tok, questions):
    out = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
           for q in questions]
    return [p["input_ids"] if hasattr(p, "keys") else list(p) for p in out]


QUESTIONS = ["What is 12 + 345?", "Name three colors.", "Write a haiku about the sea, in English please.", "2*3?"]


@pytest.mark.parametrize("name", ["tiny-qwen3+lora", "smollm2-135m-instruct"])
def test_greedy_decoding_equals_generate(name, lora_qwen, smol_tok):
    if name == "tiny-qwen3+lora":
        model, tok = lora_qwen
    else:
        from tunelab.models.load import load_model

        model, tok = load_model(name).eval(), smol_tok
    prompts = prompts_of(tok, QUESTIONS)
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    stop = stop_token_ids(tok, "<|im_end|>")
    s = GenerationSettings(max_new_tokens=24, batch_size=4)
    if name == "tiny-qwen3+lora":  # random weights never say <|im_end|>: stop at a token row 0 says 5th
        stop = [Generator(model, tok, stop).generate(prompts[:1], s, progress=False, with_ids=True)[(0, 0)][2][4]]
    ours = Generator(model, tok, stop)
    assert ours.engine == "tunelab"
    theirs = Generator(model, tok, stop, engine="hf").generate(prompts, s, progress=False, with_ids=True)
    mine = ours.generate(prompts, s, progress=False, with_ids=True)
    assert {k: v[:3] for k, v in mine.items()} == {k: v[:3] for k, v in theirs.items()}
    assert any(v[2][-1] in stop for v in mine.values())  # some rows stopped early, the others ran to the limit
    assert any(len(v[2]) == 24 for v in mine.values())


def test_stop_strings_go_through_generate(lora_qwen):
    model, tok = lora_qwen
    assert Generator(model, tok, [1], stop_strings=["\n\n"]).engine == "hf"


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_draws_follow_the_distribution_they_report(temperature, top_p):
    """200,000 draws from 6 logits: frequencies equal transformers' warped probabilities (within 5 sigma),
    tokens outside the nucleus are never drawn, and the reported log-probability is that of the draw."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    warped = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_p < 1.0:
        warped = TopPLogitsWarper(top_p)(None, warped)
    expected = torch.softmax(warped, -1)[0]
    n = 200_000
    torch.manual_seed(0)
    token, logp = _draw(logits.expand(n, -1), temperature, top_p)
    freq = torch.bincount(token, minlength=6).double() / n
    sigma = (expected.double() * (1 - expected.double()) / n).sqrt()
    assert ((freq - expected.double()).abs() <= 5 * sigma + 1e-12).all(), (freq, expected)
    assert freq[expected == 0].sum() == 0
    assert torch.allclose(logp, expected.log()[token], atol=1e-5)


def test_greedy_draw_is_the_argmax_with_log_probability_zero():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 4.0, 0.0]])
    token, logp = _draw(logits, 0.0, 1.0)
    assert token.tolist() == [1, 0] and logp.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("per_token", ["decode_step", "forward"])
def test_sampled_log_probabilities_are_the_models(per_token, lora_qwen, monkeypatch):
    """What `decode` reports for each sampled token equals the model's log-softmax at the sampling
    temperature, recomputed by one full forward over prompt + completion (GRPO corrects with these).
    Rows repeat a prompt, as GRPO's G samples do: the distinct prompts are prefilled once (3 rows, not 5)
    and each repeat then decodes on its own copy of the cache (its samples differ, its log-probs are right).
    Each token after the prefill is made by models/decode_step.py (LoRA layers added as peft adds them),
    or by the model's forward."""
    from tunelab.models import decode_step as DS

    model, tok = lora_qwen
    if per_token == "forward":
        monkeypatch.setattr(DS, "decode_step", lambda model, capacity: None)
    else:
        assert DS.decode_step(model, 64) is not None  # checked against the forward before the hook counts
    prompts = prompts_of(tok, QUESTIONS[:3])
    prompts = prompts + prompts[:2]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    seen = []
    hook = model.get_base_model().get_decoder().register_forward_pre_hook(
        lambda m, a, k: seen.append(tuple(k["input_ids"].shape)), with_kwargs=True)
    torch.manual_seed(3)
    try:
        new, logps = decode(model, ids, mask, max_new_tokens=10, temperature=0.8, top_p=1.0, stop_ids=[-1],
                            pad_id=0)
    finally:
        hook.remove()
    assert seen == [(3, width)] + ([(5, 1)] * 9 if per_token == "forward" else [])
    assert new[3].tolist() != new[0].tolist() and new[4].tolist() != new[1].tolist()
    full_mask = torch.cat([mask, torch.ones_like(new)], 1)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([ids, new], 1), attention_mask=full_mask,
                       position_ids=(full_mask.cumsum(1) - 1).clamp(min=0)).logits
    direct = torch.log_softmax(logits[:, width - 1:-1].float() / 0.8, -1).gather(2, new[..., None]).squeeze(2)
    assert new.shape == (5, 10)
    assert torch.allclose(logps, direct, atol=1e-4), (logps - direct).abs().max()


def test_inference_copy_is_the_merged_policy_and_follows_it(lora_qwen):
    from tunelab.models.inference_copy import InferenceCopy

    model, tok = lora_qwen
    ids = torch.tensor([prompts_of(tok, QUESTIONS[:1])[0]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = InferenceCopy(model, "float32")
    with torch.no_grad():
        assert torch.allclose(copy.refresh()(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the policy is untouched
        assert not any(".lora_" in n for n, _ in copy.model.named_parameters())  # a plain model
        for n, p in model.named_parameters():  # a training step changes the adapters
            if "lora_B" in n:
                p.add_(0.05)
        assert torch.allclose(copy.refresh()(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
        for k, v in before.items():
            model.state_dict()[k].copy_(v)
    dtype = model.get_base_model().config.dtype
    bf16 = InferenceCopy(model, "bfloat16").refresh()
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert model.get_base_model().config.dtype == dtype  # the policy's saved config still says what it is
    if bf16.config.tie_word_embeddings:
        assert bf16.lm_head.weight.data_ptr() == bf16.get_input_embeddings().weight.data_ptr()
