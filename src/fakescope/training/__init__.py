"""Fine-tuning a detector: the paper's three-step schedule, early stopping, logs, resume and
training in several processes."""
