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

PROMPT_TEMPLATES = {
    "qwen25-math-cot": (
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    ),
}
"""Fixed prompt templates (``eval.prompt_template``), used instead of a model's own chat
template. ``qwen25-math-cot`` is the Qwen2.5-Math evaluation toolkit's: one ChatML prompt for
every model (its system message is :data:`EVAL_SYSTEM`), whatever the model's own template."""


def check_template(template: str | None, what: str = "eval.prompt_template") -> None:
    if template is not None and template not in PROMPT_TEMPLATES:
        raise ValueError(f"{what}: expected null (the model's chat template) or one of {sorted(PROMPT_TEMPLATES)}, got {template!r}")


def chat_prompt(tokenizer, question: str, system: str | None, template: str | None = None) -> str:
    """The prompt text for ``question``: ``tokenizer``'s chat template, or a fixed ``template``
    (:data:`PROMPT_TEMPLATES`; without a system message its system line is empty)."""
    if template is not None:
        check_template(template)
        return PROMPT_TEMPLATES[template].replace("{system}", system or "").replace("{question}", question)
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": question})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Base checkpoints without a template: a plain, documented fallback.
    head = f"{system}\n\n" if system else ""
    return f"{head}Question: {question}\nAnswer:"


def encode_prompts(tokenizer, questions: list[str], system: str | None, template: str | None = None) -> list[list[int]]:
    """Token ids of each chat prompt (the template already holds any BOS token)."""
    texts = [chat_prompt(tokenizer, q, system, template) for q in questions]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def template_fingerprint(tokenizer, system: str | None, template: str | None = None) -> str:
    """Hash of everything in prompt construction that changes the token ids."""
    probe = chat_prompt(tokenizer, "<<QUESTION>>", system, template)
    h = hashlib.sha256()
    h.update(probe.encode())
    if template is None:  # a fixed template does not depend on the tokenizer's own
        h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    return h.hexdigest()[:16]
