""""Did you mean": the name a user most likely meant, for config keys, sweep parameters and metrics.

Spelling slips are caught by closeness (difflib); names brought from other toolkits are not close to
gptkit's (`learning_rate` is far from `lr`, `n_embd` is nearer `n_heads` than `emb_dim`), so ALIASES
maps the names nanoGPT, Hugging Face transformers, litgpt and torchtune use to gptkit's. An alias is
only suggested where its target is one of the names allowed there.
"""

from __future__ import annotations

import difflib
from typing import Iterable

ALIASES = {
    # [model]
    **dict.fromkeys(("n_embd", "n_embed", "hidden_size", "d_model", "embed_dim", "embedding_dim", "dim"), "emb_dim"),
    **dict.fromkeys(("n_layer", "num_layers", "num_hidden_layers", "n_blocks"), "n_layers"),
    **dict.fromkeys(("n_head", "num_heads", "num_attention_heads"), "n_heads"),
    **dict.fromkeys(("block_size", "n_positions", "n_ctx", "max_position_embeddings", "max_seq_len", "max_seq_length",
                     "seq_len", "context_len", "context_size"), "context_length"),
    **dict.fromkeys(("dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "attn_dropout", "hidden_dropout",
                     "hidden_dropout_prob", "attention_dropout", "dropout_rate", "p_dropout"), "drop_rate"),
    **dict.fromkeys(("bias", "add_qkv_bias", "attn_bias", "attention_bias"), "qkv_bias"),
    **dict.fromkeys(("n_vocab", "padded_vocab_size"), "vocab_size"),
    **dict.fromkeys(("tie_word_embeddings", "tie_embeddings", "weight_tying"), "tie_weights"),
    # [train]
    **dict.fromkeys(("learning_rate", "max_lr", "base_lr", "peak_lr"), "lr"),
    **dict.fromkeys(("min_learning_rate", "lr_min", "final_lr"), "min_lr"),
    **dict.fromkeys(("max_iters", "max_iter", "num_steps", "max_train_steps", "total_steps", "train_iters",
                     "num_iterations"), "max_steps"),
    **dict.fromkeys(("num_train_epochs", "num_epochs", "max_epochs", "n_epochs", "train_epochs"), "epochs"),
    **dict.fromkeys(("micro_batch_size", "per_device_train_batch_size", "train_batch_size", "global_batch_size", "bs"),
                    "batch_size"),
    **dict.fromkeys(("gradient_accumulation_steps", "gradient_accumulation_iters", "accumulate_grad_batches",
                     "grad_accum_steps", "grad_accumulation_steps", "accumulation_steps"), "grad_accum"),
    **dict.fromkeys(("wd", "weightdecay", "weight_decay_rate", "adam_weight_decay"), "weight_decay"),
    **dict.fromkeys(("warmup_iters", "num_warmup_steps", "lr_warmup_steps", "warmup"), "warmup_steps"),
    **dict.fromkeys(("max_grad_norm", "gradient_clip_val", "clip_grad_norm", "clip_grad", "grad_norm_clip",
                     "clip_norm", "gradient_clipping"), "grad_clip"),
    **dict.fromkeys(("lr_scheduler_type", "lr_scheduler", "scheduler", "decay_lr", "lr_decay"), "lr_schedule"),
    **dict.fromkeys(("eval_interval", "eval_steps", "eval_freq", "val_check_interval", "eval_every_n_steps"), "eval_every"),
    **dict.fromkeys(("eval_iters", "max_eval_batches", "val_batches", "eval_max_iters"), "eval_batches"),
    **dict.fromkeys(("save_steps", "save_interval", "save_every", "checkpoint_interval", "ckpt_every"), "checkpoint_every"),
    **dict.fromkeys(("save_total_limit", "keep_last_n_checkpoints", "max_checkpoints"), "keep_checkpoints"),
    **dict.fromkeys(("dtype", "torch_dtype", "mixed_precision"), "precision"),
    **dict.fromkeys(("torch_compile", "compile_model"), "compile"),
    **dict.fromkeys(("output_dir", "save_dir", "checkpoint_dir"), "out_dir"),
    # metrics (sweep files)
    **dict.fromkeys(("eval_loss", "validation_loss", "valid_loss", "val/loss", "loss/val"), "val_loss"),
    **dict.fromkeys(("train/loss", "loss/train", "training_loss"), "train_loss"),
}

# What the suggestion alone would get wrong, said with it.
NOTES = {
    **dict.fromkeys(("micro_batch_size", "per_device_train_batch_size"),
                    "the global batch of a step, split into grad_accum micro-batches"),
}


def _normal(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """'; did you mean X?' naming the choice `name` most likely meant, or '' when none is near: the
    same name spelt with - for _ or in other case, then its alias, then the closest spelling."""
    choices = list(choices)
    normal = _normal(name)
    near = next((c for c in choices if _normal(c) == normal), None)
    if near is None and ALIASES.get(normal) in choices:
        near = ALIASES[normal]
    if near is None:
        near = next(iter(difflib.get_close_matches(name, choices, n=1)), None)
    if near is None:
        return ""
    note = f" ({NOTES[normal]})" if normal in NOTES and near == ALIASES.get(normal) else ""
    return f"; did you mean {near!r}{note}?"
