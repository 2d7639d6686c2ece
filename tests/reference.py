"""Reference generation with transformers, and the tie rule used when comparing greedy outputs.

A divergence from the reference is a *tie*, not a bug, only where the reference's own top-two
logits at the first differing step are within ``TIE_EPS`` (fp32 summation order can flip them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TIE_EPS = 1e-3


@dataclass
class Reference:
    tokens: list[int]
    top2_gaps: list[float]  # per generated step: logit(top1) - logit(top2)


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> Reference:
    """Greedy continuation with transformers ``generate`` (batch 1, no padding), with per-step gaps.

    EOS is disabled on the model (not masked with ``min_new_tokens``, which would change the argmax) so
    the reference runs ``max_new_tokens`` like pitstop's ``ignore_eos``.
    """
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0,
                             temperature=None, top_p=None, top_k=None)
    tokens = out.sequences[0, len(prompt_ids):].tolist()
    gaps = []
    for s in out.scores:
        top = torch.topk(s[0].float(), 2).values
        gaps.append(float(top[0] - top[1]))
    return Reference(tokens, gaps)


def compare_greedy(ours: list[int], ref: Reference) -> str | None:
    """None if equal (up to ``len(ours)``), "tie at i" for a tie divergence; raises AssertionError otherwise."""
    n = min(len(ours), len(ref.tokens))
    for i in range(n):
        if ours[i] != ref.tokens[i]:
            if ref.top2_gaps[i] < TIE_EPS:
                return f"tie at step {i} (reference top-2 gap {ref.top2_gaps[i]:.2e})"
            raise AssertionError(f"divergence at step {i}: ours {ours[i]} vs reference {ref.tokens[i]} "
                                 f"(reference top-2 gap {ref.top2_gaps[i]:.3f}, not a tie)\n"
                                 f"ours={ours}\nref ={ref.tokens}")
    return None
