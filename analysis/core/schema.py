"""Names every layer shares: the columns of the store's traces and checkpoints, the per-checkpoint signals the
policy families read, and the kinds of checkpoint (with the transition words that place one)."""

# columns of the store's tables, as the writers give them (char_pos: characters of the trace's text before the
# checkpoint, None where not known; Store.put_results fills it NULL when a writer leaves it out)
CHECKPOINT_COLUMNS = ["run_id", "question_id", "ck_idx", "pos", "kind", "is_step", "is_transition",
                      "answer_raw", "answer_norm", "em", "f1", "p_mean", "p_geo", "p_min", "p_first",
                      "entropy", "answer_tokens", "probe_tokens", "char_pos"]
TRACE_COLUMNS = ["run_id", "question_id", "text", "n_tokens", "final_raw", "final_norm", "em", "f1",
                 "finish_reason", "gen_s", "probe_s"]
SIGNAL_COLUMNS = ["p_mean", "p_geo", "p_min", "p_first", "entropy"]

# checkpoint kinds, by rank: where two placements fall on one position the higher kind names it
CHECKPOINT_KINDS = ("interval", "step", "transition", "final")
KIND_RANK = {"interval": 0, "step": 1, "transition": 2, "final": 3}
# words that open a new line of thought (DEER's transition points): a checkpoint just before each
TRANSITION_WORDS = ("Wait", "Alternatively", "Hmm", "But wait", "Actually", "Let me double-check",
                    "Let me check", "On second thought")
