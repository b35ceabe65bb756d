"""Fine-tuning the default model's variants: the training data, the training pass over chosen
components, and the behaviour check a fine-tune must pass.
"""

__all__ = ["behaviour", "finetune", "plan", "training_data"]
