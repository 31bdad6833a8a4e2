"""What a run asks the model: the generation config (checkpoint placement, decoding, cue), the prompt
templates per answer type, the end-of-thinking cues, and the chat prompt built from them."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from analysis.core.answers import NUMBER

CUES = {
    "instruct": "\n\nSo the final answer is \\boxed{",
    "thinking": "\n</think>\n\n**Final Answer**\n\\boxed{",
}
PROMPTS = {
    NUMBER: "{question}\nSolve it step by step, then write the final answer inside \\boxed{{}}.",
    "text": "Answer the question. Think briefly, then write the final answer inside \\boxed{{}}.\n{question}",
    "math": "{question}\nSolve it step by step, then write the final answer in LaTeX inside \\boxed{{}}.",
    "choice": "{question}\nThink it through, then write the letter of your choice inside \\boxed{{}}.",
}


@dataclass
class GenConfig:
    every: int = 32
    steps: bool = True
    transitions: bool = True
    max_new_tokens: int = 512
    temperature: float = 0.0          # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    max_answer_tokens: int = 20
    prompt_template: str | None = None
    cue: str | None = None
    system: str | None = None

    def resolved(self, answer_type: str, kind: str) -> "GenConfig":
        c = copy.copy(self)
        c.prompt_template = c.prompt_template or PROMPTS[answer_type]
        c.cue = c.cue or CUES[kind]
        return c



def chat_messages(question: str, cfg: GenConfig) -> list[dict]:
    """The chat a run sends for a question: its system message, if any, and the question in the prompt template."""
    return ([{"role": "system", "content": cfg.system}] if cfg.system else []) + \
        [{"role": "user", "content": cfg.prompt_template.format(question=question)}]


def build_prompt(tok, question: str, cfg: GenConfig) -> str:
    msgs = chat_messages(question, cfg)
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return msgs[-1]["content"] + "\n"

