"""Stage 4, learning: LoRA or full continual pretraining through accelerate (`train`), its
packed blocks and length-grouped batches (`batches`) and the fused single-process step
(`trainstep`)."""
