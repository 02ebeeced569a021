from circuits.induction import attention_scores, head_scores
