"""Generated token t -> query row P + t - 1 (``token_rows.query_rows``): by hand, and against
what a real causal LM's greedy ``generate`` does."""

import pytest
import torch

from vlsam_ros.core.vlm.token_rows import query_rows


def test_rows_by_hand():
    assert query_rows(5, (0, 1)) == (4,)          # first token: the last prompt position
    assert query_rows(5, (2, 4)) == (6, 7)        # later tokens: the previous token's position
    assert query_rows(1, (0, 0)) == ()


@pytest.mark.parametrize("prompt_len, span", [(0, (0, 1)), (3, (-1, 1)), (3, (2, 1))])
def test_rows_reject_impossible_inputs(prompt_len, span):
    with pytest.raises(ValueError):
        query_rows(prompt_len, span)


def test_each_row_is_the_step_that_generated_its_token():
    """Greedy decoding: the token at P + t is the argmax of the logits at row P + t - 1 of a
    single forward pass over the whole sequence (a random 1-layer Llama; no downloads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2)).eval()
    prompt = torch.tensor([[3, 14, 15, 9, 26, 5]])
    new_tokens = 6
    with torch.inference_mode():
        sequence = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, pad_token_id=0, eos_token_id=None)
        logits = model(sequence).logits[0]
    p = prompt.shape[1]
    generated = sequence[0, p:].tolist()
    assert len(set(generated)) > 1, "a constant answer could not tell neighbouring rows apart"
    rows = query_rows(p, (0, new_tokens))
    assert [int(logits[r].argmax()) for r in rows] == generated
    # the off-by-one the function guards against: row P + t predicts the NEXT token
    assert [int(logits[r + 1].argmax()) for r in rows[:-1]] != generated[:-1]
