"""Distillation engine (black-box from an API, white-box from logits). Losses first; collection and training
recipes build on them."""
