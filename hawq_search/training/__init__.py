"""Fine-tuning a plan: LSQ quantization-aware training with distillation and schedules
(direct, gradual QGAT, CTMQ). Submodules import torch; this file imports nothing, so the CLI
can read :mod:`hawq_search.training.options` without loading torch."""
