"""Fine-tuning the default model's variants: the training data, the training pass over chosen
components, spreading a trained gate over its units, and the behaviour check a fine-tune must
pass.
"""

__all__ = ["behaviour", "finetune", "plan", "spread", "training_data"]
