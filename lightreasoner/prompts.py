"""Prompt construction shared by sampling, evaluation and the demo's trace training.

Every stage builds prompts the same way: the model's own chat template, a system message,
the question as the user turn, the generation prompt appended.
"""

from __future__ import annotations

import hashlib

SAMPLING_SYSTEM = "Please reason step by step."
"""Stage 1 system message (METHOD.md, contrastive sampling)."""

EVAL_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
"""Evaluation system message (the Qwen2.5-Math toolkit's ``qwen25-math-cot`` prompt)."""


def chat_prompt(tokenizer, question: str, system: str | None) -> str:
    """The prompt text for ``question`` with ``tokenizer``'s chat template."""
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": question})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Base checkpoints without a template: a plain, documented fallback.
    head = f"{system}\n\n" if system else ""
    return f"{head}Question: {question}\nAnswer:"


def encode_prompts(tokenizer, questions: list[str], system: str | None) -> list[list[int]]:
    """Token ids of each chat prompt (the template already holds any BOS token)."""
    texts = [chat_prompt(tokenizer, q, system) for q in questions]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def template_fingerprint(tokenizer, system: str | None) -> str:
    """Hash of everything in prompt construction that changes the token ids."""
    probe = chat_prompt(tokenizer, "<<QUESTION>>", system)
    h = hashlib.sha256()
    h.update(probe.encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    return h.hexdigest()[:16]
