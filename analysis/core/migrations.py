"""The store's schema as a list of migrations (``meta.schema_version`` counts the ones applied); ``Store``
applies the missing ones, each in one transaction, when a store is opened writable."""

# --- schema -----------------------------------------------------------------------------------------------
# Each migration takes the store from version i to i+1. Never edit a released migration: add one.
MIGRATIONS: list[str] = [
    # v1: the core tables
    """
    CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR);
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY,          -- first 12 hex of config_hash
        config_hash VARCHAR NOT NULL UNIQUE, -- sha256 of (model, dataset, config): the cache key
        model VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        answer_type VARCHAR NOT NULL,        -- number | text
        source VARCHAR NOT NULL,             -- generated | imported
        config JSON NOT NULL,                -- prompt template, cue, decoding, checkpoint placement, ...
        status VARCHAR NOT NULL,             -- running | complete | failed
        n_planned INTEGER,
        created_at TIMESTAMP NOT NULL,
        updated_at TIMESTAMP NOT NULL
    );
    CREATE TABLE questions (
        dataset VARCHAR NOT NULL,
        question_id VARCHAR NOT NULL,
        idx INTEGER NOT NULL,                -- order in the dataset
        text VARCHAR NOT NULL,
        gold JSON NOT NULL,                  -- list of alias strings
        answer_type VARCHAR NOT NULL,
        meta JSON,                           -- slicing metadata: difficulty, category, ...
        PRIMARY KEY (dataset, question_id)
    );
    CREATE TABLE traces (
        run_id VARCHAR NOT NULL,
        question_id VARCHAR NOT NULL,
        text VARCHAR NOT NULL,
        n_tokens INTEGER NOT NULL,
        final_raw VARCHAR,
        final_norm VARCHAR,
        em DOUBLE NOT NULL,
        f1 DOUBLE NOT NULL,
        finish_reason VARCHAR,               -- eos | length | imported
        gen_s DOUBLE,
        probe_s DOUBLE,
        PRIMARY KEY (run_id, question_id)
    );
    CREATE TABLE checkpoints (
        run_id VARCHAR NOT NULL,
        question_id VARCHAR NOT NULL,
        ck_idx SMALLINT NOT NULL,            -- 0.. in trace order; the last one is the trace's end
        pos INTEGER NOT NULL,                -- tokens of the trace before the cue
        kind VARCHAR NOT NULL,               -- interval | step | transition | final
        is_step BOOLEAN NOT NULL,
        is_transition BOOLEAN NOT NULL,
        answer_raw VARCHAR,
        answer_norm VARCHAR,
        em DOUBLE NOT NULL,
        f1 DOUBLE NOT NULL,
        p_mean DOUBLE, p_geo DOUBLE, p_min DOUBLE, p_first DOUBLE,   -- answer token probabilities
        entropy DOUBLE,                      -- next-token entropy right after the cue (nats)
        answer_tokens INTEGER NOT NULL,      -- tokens of the trial answer
        probe_tokens INTEGER NOT NULL        -- tokens the probe computed (cue + answer)
    );
    """,
    # v2: presets kept in the store; free-form run tags
    """
    CREATE TABLE presets (name VARCHAR PRIMARY KEY, body JSON NOT NULL, created_at TIMESTAMP NOT NULL);
    ALTER TABLE runs ADD COLUMN tags JSON;
    """,
    # v3: sweeps materialised when a run is written (the dashboard's first load reads them, see frontier.py)
    """
    CREATE TABLE sweeps (
        run_id VARCHAR NOT NULL,
        key VARCHAR NOT NULL,                -- families, code version and the run's counts (frontier.sweep_key)
        data BLOB NOT NULL,                  -- the sweep table as Parquet
        created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (run_id, key)
    );
    """,
    # v4: where the user's own (production) stopper stopped, per question, and what it answered
    # (analysis/incumbent.py writes it; replay reads it as the "your mechanism" outcome)
    """
    CREATE TABLE incumbent (
        run_id VARCHAR,
        question_id VARCHAR,
        pos INTEGER NOT NULL,                -- tokens of the trace before the production stopper stopped
        answer_raw VARCHAR,                  -- what it answered; NULL: the trial answer at the stop (replay's)
        answer_norm VARCHAR,
        em DOUBLE,                           -- NULL with answer_raw NULL
        f1 DOUBLE,
        PRIMARY KEY (run_id, question_id)
    );
    """,
    # v5: where each checkpoint cuts the trace's text, in characters (the Questions page greys what follows the
    # stop exactly); NULL where it is not known (rows written before v5, a checkpoint export without the
    # trace's tokenizer): the page then places the cut in proportion to tokens and says so
    """
    ALTER TABLE checkpoints ADD COLUMN char_pos INTEGER;
    """,
]
